//! Policy decisions of the service, without sockets: frames in, replies out.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use gmem_protocol::conn::Frame;
use gmem_protocol::wire::{
    BindRequest, CreateFlags, CreateRequest, DepositRequest, Features, FileInfo, FileRef,
    FileStatus, GuestAddress, HandoffRequest, Header, Hello, LeaseStatus, MemoryKind, Name, Reply,
    RequestBody, RevokeReport, ScopedFileStatus, StatusQuery, StatusSection, TransferRequest, Uuid,
    VmId, VmSelector,
};
use rustix::io::Errno;

use super::*;
use crate::config::Config;
use crate::ledger::{FileKey, Peer};
use crate::principal::Principal;

const MIB: u64 = 1 << 20;
const ALICE: u32 = 1000;
const BOB: u32 = 2000;
const ROOT: u32 = 0;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn vm(s: &str) -> VmId {
    VmId::from_name(name(s))
}

fn config() -> Config {
    let mut config = Config {
        allowed_uids: vec![ALICE, BOB],
        admin_uids: vec![ROOT],
        ..Config::default()
    };
    config.limits.max_total_memory = 64 * MIB;
    config.limits.max_files_per_vm = 2;
    config.quotas.memory = 64 * MIB;
    config
}

fn service() -> Service {
    Service::new(config())
}

fn service_with(change: impl FnOnce(&mut Config)) -> Service {
    let mut config = config();
    change(&mut config);
    Service::new(config)
}

fn frame(body: &RequestBody, fds: Vec<OwnedFd>) -> Frame {
    let payload = body.encode();
    Frame {
        header: Header::request(body.request(), payload.len()),
        payload,
        fds,
    }
}

fn serve(svc: &mut Service, s: &mut Session, body: RequestBody, fds: Vec<OwnedFd>) -> Served {
    svc.serve(s, frame(&body, fds), None)
}

fn call(svc: &mut Service, s: &mut Session, body: RequestBody) -> Result<Reply, Reply> {
    let reply = Reply::decode(&serve(svc, s, body, Vec::new()).reply.payload).unwrap();
    if reply.status == 0 {
        Ok(reply)
    } else {
        Err(reply)
    }
}

/// A request that hands out an fd: the fd.
fn call_fd(svc: &mut Service, s: &mut Session, body: RequestBody) -> OwnedFd {
    let mut served = serve(svc, s, body, Vec::new());
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, 0, "{}", reply.text);
    assert_eq!(served.reply.fds.len(), 1);
    served.reply.fds.pop().unwrap()
}

fn errno_of(result: Result<Reply, Reply>) -> Errno {
    Errno::from_raw_os_error(-result.unwrap_err().status)
}

/// The reply's errno and text, for a refusal.
fn refused(result: Result<Reply, Reply>) -> (Errno, String) {
    let reply = result.unwrap_err();
    (Errno::from_raw_os_error(-reply.status), reply.text)
}

fn principal(uid: u32) -> Principal {
    Principal {
        uid,
        ..Principal::default()
    }
}

/// A session of process `pid` (0: one gmemd cannot see) of `uid`.
fn session_of(svc: &Service, id: u64, uid: u32, pid: u32) -> Session {
    svc.open_session(id, Peer { pid, uid }, principal(uid), 0)
}

fn session(svc: &Service, id: u64, uid: u32) -> Session {
    session_of(svc, id, uid, 0)
}

fn hello_with(features: Features, vm: Option<VmId>) -> RequestBody {
    RequestBody::Hello(Hello { features, vm })
}

fn hello(vm: Option<&str>) -> RequestBody {
    hello_with(Features::all(), vm.map(self::vm))
}

/// A lease of VM `v` by `uid`, every feature negotiated.
fn vm_session(svc: &mut Service, id: u64, v: &str, uid: u32) -> Session {
    let mut s = session(svc, id, uid);
    call(svc, &mut s, hello(Some(v))).unwrap();
    s
}

/// A control session of `uid`, every feature negotiated.
fn control(svc: &mut Service, id: u64, uid: u32) -> Session {
    let mut s = session(svc, id, uid);
    call(svc, &mut s, hello(None)).unwrap();
    s
}

fn create_named(file: &str, size: u64) -> RequestBody {
    RequestBody::Create(CreateRequest {
        name: name(file),
        size,
        kind: MemoryKind::Memfd,
        flags: CreateFlags::empty(),
    })
}

fn create(size: u64) -> RequestBody {
    create_named("f", size)
}

fn open(file: &str) -> RequestBody {
    RequestBody::Open(FileRef::own(name(file)))
}

fn destroy(file: &str) -> RequestBody {
    RequestBody::Destroy(FileRef::own(name(file)))
}

/// `file` of VM `v`, named by VM name (feature `VM_SCOPE`).
fn in_vm(v: &str, file: &str) -> FileRef {
    FileRef::vm(VmSelector::Name(name(v)), name(file))
}

fn transfer(from: FileRef, to: FileRef) -> RequestBody {
    RequestBody::Transfer(TransferRequest { from, to })
}

fn forget(v: &str) -> RequestBody {
    RequestBody::Forget(VmSelector::Name(name(v)))
}

fn read_at(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::from(fd.try_clone().unwrap())
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn write_at(fd: &OwnedFd, offset: u64, data: &[u8]) {
    File::from(fd.try_clone().unwrap())
        .write_all_at(data, offset)
        .unwrap();
}

fn status(svc: &mut Service, s: &mut Session, section: StatusSection) -> Result<Reply, Reply> {
    call(
        svc,
        s,
        RequestBody::Status(StatusQuery { section, start: 0 }),
    )
}

/// STATUS files: the total and the names on the first page, sorted.
fn files_seen(svc: &mut Service, s: &mut Session) -> (u32, Vec<String>) {
    let reply = status(svc, s, StatusSection::Files).unwrap();
    let page = FileStatus::decode_page(&reply.body).unwrap();
    let mut names: Vec<String> = page.entries.iter().map(|f| f.name.to_string()).collect();
    names.sort();
    (page.total, names)
}

/// STATUS scoped-files: the total and `vm/name` (or `name`) with the idle
/// seconds of each, sorted.
fn scoped_files_seen(svc: &mut Service, s: &mut Session) -> (u32, Vec<(String, u64)>) {
    let reply = status(svc, s, StatusSection::ScopedFiles).unwrap();
    let page = ScopedFileStatus::decode_page(&reply.body).unwrap();
    let mut entries = page
        .entries
        .iter()
        .map(|e| {
            let label = match &e.vm {
                Some(vm) => format!("{}/{}", vm.name, e.file.name),
                None => e.file.name.to_string(),
            };
            (label, e.idle_secs)
        })
        .collect::<Vec<_>>();
    entries.sort();
    (page.total, entries)
}

/// STATUS leases: the total and the VM names on the first page, sorted.
fn leases_seen(svc: &mut Service, s: &mut Session) -> (u32, Vec<String>) {
    let reply = status(svc, s, StatusSection::Leases).unwrap();
    let page = LeaseStatus::decode_page(&reply.body).unwrap();
    let mut names: Vec<String> = page.entries.iter().map(|l| l.vm.name.to_string()).collect();
    names.sort();
    (page.total, names)
}

/// A process of its own, killed (and reaped) when dropped, even when a
/// test fails.
struct Process(std::process::Child);

impl Process {
    fn spawn() -> Self {
        Process(
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn snapshot(svc: &Service) -> String {
    format!("{:?}", svc.ledger())
}

mod devices;
mod persist;
mod quotas;
mod requests;
mod tenants;
mod transfer;
mod warm;
