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
    svc.serve(s, frame(&body, fds))
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

// ---- the request path ----

#[test]
fn handshake_first_and_once() {
    let mut svc = service();
    let mut s = session(&svc, 1, ROOT);
    let err = errno_of(call(&mut svc, &mut s, open("x")));
    assert_eq!(err, Errno::PROTO);
    let control = hello_with(Features::empty(), None);
    call(&mut svc, &mut s, control.clone()).unwrap();
    assert_eq!(errno_of(call(&mut svc, &mut s, control)), Errno::PROTO);
    // SCRUB, TRANSFER and FORGET were not negotiated.
    let scrub = RequestBody::Scrub(FileRef::own(name("x")));
    assert_eq!(errno_of(call(&mut svc, &mut s, scrub)), Errno::OPNOTSUPP);
    let t = transfer(FileRef::operators(name("x")), in_vm("a", "x"));
    assert_eq!(errno_of(call(&mut svc, &mut s, t)), Errno::OPNOTSUPP);
    assert_eq!(
        errno_of(call(&mut svc, &mut s, forget("a"))),
        Errno::OPNOTSUPP
    );
}

#[test]
fn disallowed_peers_are_cut_off_even_for_malformed_messages() {
    let mut svc = service();
    let mut s = session(&svc, 1, 4242);
    let served = serve(&mut svc, &mut s, hello(None), Vec::new());
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::ACCESS.raw_os_error());
    assert!(reply.text.contains("uid 4242"));
    assert!(served.close);
    let garbage = Frame {
        header: Header {
            code: 999,
            is_reply: false,
            size: 0,
        },
        payload: Vec::new(),
        fds: Vec::new(),
    };
    let served = svc.serve(&mut s, garbage);
    assert!(served.close);
    assert_eq!(
        Reply::decode(&served.reply.payload).unwrap().status,
        -Errno::ACCESS.raw_os_error()
    );
}

#[test]
fn operators_are_admitted_without_being_listed_as_clients() {
    let mut svc = service();
    // uid 0 is an operator, not in allowed_uids: still admitted.
    let mut root = vm_session(&mut svc, 1, "root-vm", ROOT);
    call(&mut svc, &mut root, create(4096)).unwrap();
}

#[test]
fn malformed_requests_get_their_errno_and_change_nothing() {
    let mut svc = service();
    let mut s = vm_session(&mut svc, 1, "a", ALICE);
    let mut bad = frame(&open("x"), Vec::new());
    bad.payload.pop();
    bad.header.size -= 1;
    let reply = Reply::decode(&svc.serve(&mut s, bad).reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::INVAL.raw_os_error());
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let served = serve(&mut svc, &mut s, open("x"), vec![memfd]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::BADF.raw_os_error());
    assert!(!served.close);
    assert_eq!(svc.ledger().files().count(), 0);
}

#[test]
fn limits_are_enforced_per_vm() {
    let mut svc = service();
    let mut s = vm_session(&mut svc, 1, "a", ALICE);
    let err = call(&mut svc, &mut s, create(128 * MIB)).unwrap_err();
    assert_eq!(err.status, -Errno::NOSPC.raw_os_error());
    assert!(err.text.contains("memory limit"));
    // A size no file can have is EINVAL, not a full memory limit.
    for size in [u64::MAX, 0, 100] {
        let err = errno_of(call(&mut svc, &mut s, create(size)));
        assert_eq!(err, Errno::INVAL, "size {size:#x}");
    }
    let whole_pages = create(u64::MAX - 4095);
    assert_eq!(errno_of(call(&mut svc, &mut s, whole_pages)), Errno::NOSPC);
    for n in ["a1", "a2"] {
        call(&mut svc, &mut s, create_named(n, 4096)).unwrap();
    }
    let err = call(&mut svc, &mut s, create(4096)).unwrap_err();
    assert_eq!(err.status, -Errno::MFILE.raw_os_error());
    assert!(err.text.contains("VM a"), "{}", err.text);
    // Reconnecting does not reset the count: the files are the VM's.
    svc.close_session(&s, "test");
    let mut again = vm_session(&mut svc, 2, "a", ALICE);
    assert_eq!(
        errno_of(call(&mut svc, &mut again, create(4096))),
        Errno::MFILE
    );
}

#[test]
fn revoke_needs_an_operator_and_returns_the_lease_it_ended() {
    let mut svc = service();
    let mut user = vm_session(&mut svc, 1, "a", ALICE);
    let mut admin = vm_session(&mut svc, 2, "b", ROOT);
    let revoke_b = RequestBody::Revoke(VmSelector::Name(name("b")));
    assert_eq!(errno_of(call(&mut svc, &mut user, revoke_b)), Errno::PERM);
    let scrub = RequestBody::Scrub(FileRef::own(name("x")));
    assert_eq!(errno_of(call(&mut svc, &mut user, scrub)), Errno::PERM);
    let served = serve(
        &mut svc,
        &mut admin,
        RequestBody::Revoke(VmSelector::Name(name("a"))),
        Vec::new(),
    );
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(RevokeReport::decode(&reply.body).unwrap().leases, 1);
    assert_eq!(served.ended, vec![user.lease().unwrap()]);
    // The revoked session is answered, not served.
    user.revoke();
    assert_eq!(user.lease(), None);
    let err = call(&mut svc, &mut user, create(4096)).unwrap_err();
    assert_eq!(err.status, -Errno::CONNABORTED.raw_os_error());
    assert!(err.text.contains("revoked"), "{}", err.text);
    assert!(svc.ledger().files().next().is_none());
    // Its connection closing later finds nothing left to end.
    svc.close_session(&user, "closed");
}

#[test]
fn a_refused_deposit_leaves_the_fd_alone() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let big = rustix::fs::memfd_create(
        "big",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&big, 128 * MIB).unwrap();
    let request = RequestBody::Deposit(DepositRequest {
        name: name("dep"),
        kind: MemoryKind::Memfd,
    });
    let served = serve(&mut svc, &mut a, request, vec![big.try_clone().unwrap()]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::NOSPC.raw_os_error());
    assert!(rustix::fs::fcntl_get_seals(&big).unwrap().is_empty());
}

#[test]
fn control_sessions_cannot_bind_and_non_operators_get_no_fds() {
    let mut svc = service();
    let mut ctl = control(&mut svc, 1, ALICE);
    assert_eq!(
        errno_of(call(&mut svc, &mut ctl, create(4096))),
        Errno::PERM
    );
    let bind = RequestBody::Bind(BindRequest::new(0, GuestAddress(0), name("f"), 0, 4096));
    assert_eq!(errno_of(call(&mut svc, &mut ctl, bind)), Errno::PERM);
    let pidfd = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let handoff = RequestBody::Handoff(HandoffRequest { fd: 0 });
    let served = serve(&mut svc, &mut ctl, handoff, vec![pidfd]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::PERM.raw_os_error());
}

#[test]
fn handoff_is_refused_for_a_process_without_the_socket() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    // This session has no real socket (inode 0): no process holds its peer.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let handoff = RequestBody::Handoff(HandoffRequest { fd: 0 });
    let served = serve(&mut svc, &mut a, handoff.clone(), vec![pidfd]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_ne!(reply.status, 0);
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let served = serve(&mut svc, &mut a, handoff, vec![memfd]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::INVAL.raw_os_error(), "{}", reply.text);
}

// ---- principals (invariant 6) ----

#[test]
fn a_vm_of_another_principal_is_refused_with_eacces_and_operators_are_admitted() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    // A file keeps the VM, and its tie, after its lease.
    call(&mut svc, &mut a, create(4096)).unwrap();
    let mut bob = session(&svc, 2, BOB);
    // Bob learns that a is someone else's, not that it runs (no EBUSY).
    let (errno, text) = refused(call(&mut svc, &mut bob, hello(Some("a"))));
    assert_eq!(errno, Errno::ACCESS);
    assert!(text.contains("another principal"), "{text}");
    assert!(bob.awaiting_hello());
    // Alice's second lease of a running VM is EBUSY.
    let mut again = session(&svc, 3, ALICE);
    assert_eq!(
        errno_of(call(&mut svc, &mut again, hello(Some("a")))),
        Errno::BUSY
    );
    // One name is one UUID, and one UUID one name.
    let twin = VmId {
        uuid: Uuid([7; 16]),
        name: name("a"),
    };
    let renamed = VmId {
        uuid: vm("a").uuid,
        name: name("z"),
    };
    for other in [twin, renamed] {
        let hello = hello_with(Features::all(), Some(other));
        assert_eq!(
            errno_of(call(&mut svc, &mut again, hello.clone())),
            Errno::EXIST
        );
        // To another principal the name is simply someone else's.
        assert_eq!(errno_of(call(&mut svc, &mut bob, hello)), Errno::ACCESS);
    }
    // Once a has stopped, an operator may take its lease; the tie stays.
    svc.close_session(&a, "test");
    assert_eq!(
        errno_of(call(&mut svc, &mut bob, hello(Some("a")))),
        Errno::ACCESS
    );
    let mut root = session(&svc, 4, ROOT);
    call(&mut svc, &mut root, hello(Some("a"))).unwrap();
    assert_eq!(svc.ledger().vm(vm("a").uuid).unwrap().tie.uid, ALICE);
}

// ---- namespaces ----

#[test]
fn plain_names_mean_the_leases_vm_or_on_control_sessions_the_operators() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    call(&mut svc, &mut a, create(4096)).unwrap();
    call(&mut svc, &mut b, create(2 * 4096)).unwrap();
    call(&mut svc, &mut root, create(3 * 4096)).unwrap();
    let ledger = svc.ledger();
    let size = |key: FileKey| ledger.file(&key).unwrap().spec.size;
    assert_eq!(size(FileKey::vm(vm("a").uuid, name("f"))), 4096);
    assert_eq!(size(FileKey::vm(vm("b").uuid, name("f"))), 2 * 4096);
    assert_eq!(size(FileKey::operators(name("f"))), 3 * 4096);
    // Each opens its own.
    for (s, pages) in [(&mut a, 1), (&mut b, 2), (&mut root, 3)] {
        let reply = call(&mut svc, s, open("f")).unwrap();
        assert_eq!(FileInfo::decode(&reply.body).unwrap().size, pages * 4096);
    }
    // b destroys its own f; a's is not there for b to name.
    call(&mut svc, &mut b, destroy("f")).unwrap();
    assert_eq!(errno_of(call(&mut svc, &mut b, destroy("f"))), Errno::NOENT);
    assert_eq!(svc.ledger().file_count(), 2);
    // A relaunch of a destroys what a made.
    svc.close_session(&a, "test");
    let mut a2 = vm_session(&mut svc, 4, "a", ALICE);
    call(&mut svc, &mut a2, destroy("f")).unwrap();
    assert_eq!(svc.ledger().file_count(), 1);
}

#[test]
fn scoped_names_need_vm_scope_and_a_non_operator_names_only_its_own_vm() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    call(&mut svc, &mut a, create(4096)).unwrap();
    call(&mut svc, &mut b, create_named("h", 4096)).unwrap();
    call(&mut svc, &mut root, create_named("pool", 4096)).unwrap();

    // Its own VM, by name or UUID.
    let by_uuid = FileRef::vm(VmSelector::Uuid(vm("a").uuid), name("f"));
    for file in [in_vm("a", "f"), by_uuid] {
        call_fd(&mut svc, &mut a, RequestBody::Open(file));
    }
    // Anything else is EPERM, whether it exists or not: a non-operator
    // learns nothing of other VMs.
    let before = snapshot(&svc);
    for file in [
        in_vm("b", "h"),
        in_vm("b", "nope"),
        in_vm("zz", "f"),
        FileRef::operators(name("pool")),
    ] {
        for body in [
            RequestBody::Open(file.clone()),
            RequestBody::Destroy(file.clone()),
            RequestBody::Scrub(file.clone()),
        ] {
            let (errno, text) = refused(call(&mut svc, &mut a, body.clone()));
            assert_eq!(errno, Errno::PERM, "{body:?}: {text}");
        }
    }
    assert_eq!(snapshot(&svc), before);
    // Without VM_SCOPE a scoped name is not understood.
    let mut old = session(&svc, 4, ALICE);
    let hello = hello_with(Features::all() - Features::VM_SCOPE, Some(vm("a2")));
    call(&mut svc, &mut old, hello).unwrap();
    let open_own = RequestBody::Open(in_vm("a2", "f"));
    assert_eq!(
        errno_of(call(&mut svc, &mut old, open_own)),
        Errno::OPNOTSUPP
    );
    // An operator names any VM's file; an unknown VM is ENOENT for it.
    call_fd(&mut svc, &mut root, RequestBody::Open(in_vm("b", "h")));
    assert_eq!(
        errno_of(call(
            &mut svc,
            &mut root,
            RequestBody::Open(in_vm("zz", "f"))
        )),
        Errno::NOENT
    );
    call(&mut svc, &mut root, RequestBody::Destroy(in_vm("b", "h"))).unwrap();
    assert!(svc
        .ledger()
        .file(&FileKey::vm(vm("b").uuid, name("h")))
        .is_err());
}

// ---- TRANSFER and FORGET ----

#[test]
fn transfer_copies_the_content_into_a_fresh_inode() {
    let mut svc = service();
    let mut root = control(&mut svc, 1, ROOT);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let old = call_fd(&mut svc, &mut root, create_named("tmpl", MIB));
    write_at(&old, 0, b"template data");
    let served = serve(
        &mut svc,
        &mut root,
        transfer(FileRef::operators(name("tmpl")), in_vm("b", "ram")),
        Vec::new(),
    );
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, 0, "{}", reply.text);
    let info = FileInfo::decode(&reply.body).unwrap();
    assert_eq!((info.size, info.kind), (MIB, MemoryKind::Memfd));
    assert!(served.reply.fds.is_empty(), "TRANSFER hands out no fd");
    assert!(svc
        .ledger()
        .file(&FileKey::operators(name("tmpl")))
        .is_err());

    // The old inode is punched: whoever kept it reads zeros...
    assert_eq!(read_at(&old, 0, 13), [0; 13]);
    // ... and what they write there never reaches b's file.
    write_at(&old, 4096, b"spy");
    let new = call_fd(&mut svc, &mut b, open("ram"));
    assert_eq!(read_at(&new, 0, 13), b"template data");
    assert_eq!(read_at(&new, 4096, 3), [0; 3]);
    write_at(&new, 8192, b"b's secret");
    assert_eq!(read_at(&old, 8192, 10), [0; 10]);
    let inode = |fd: &OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
    assert_ne!(inode(&old), inode(&new));
}

#[test]
fn transfer_refusals_change_nothing() {
    let mut svc = service();
    let mut root = control(&mut svc, 1, ROOT);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    call(&mut svc, &mut root, create_named("tmpl", MIB)).unwrap();
    call(&mut svc, &mut b, create_named("ram", MIB)).unwrap();
    call(&mut svc, &mut b, create_named("bound", MIB)).unwrap();
    let bind = BindRequest::new(0, GuestAddress(0), name("bound"), 0, MIB);
    call(&mut svc, &mut b, RequestBody::Bind(bind)).unwrap();
    let tmpl = || FileRef::operators(name("tmpl"));
    let cases = [
        // Operators only, even for a VM's own file.
        (false, transfer(in_vm("b", "ram"), tmpl()), Errno::PERM),
        (true, transfer(tmpl(), in_vm("b", "ram")), Errno::EXIST),
        (true, transfer(tmpl(), in_vm("zz", "ram")), Errno::NOENT),
        (true, transfer(in_vm("zz", "x"), tmpl()), Errno::NOENT),
        (
            true,
            transfer(in_vm("b", "nope"), in_vm("b", "x")),
            Errno::NOENT,
        ),
        (
            true,
            transfer(in_vm("b", "bound"), FileRef::operators(name("x"))),
            Errno::BUSY,
        ),
    ];
    let before = snapshot(&svc);
    for (operator, body, errno) in cases {
        let s = if operator { &mut root } else { &mut b };
        let (got, text) = refused(call(&mut svc, s, body.clone()));
        assert_eq!(got, errno, "{body:?}: {text}");
        assert_eq!(snapshot(&svc), before, "{body:?} changed the ledger");
    }
}

#[test]
fn forget_destroys_a_vms_files_and_frees_its_name_for_anyone() {
    let mut svc = service();
    let mut root = control(&mut svc, 1, ROOT);
    let mut a = vm_session(&mut svc, 2, "a", ALICE);
    let fd = call_fd(&mut svc, &mut a, create(MIB));
    write_at(&fd, 0, b"alice's data");
    // Not while the VM runs, not by a non-operator, not an unknown VM.
    assert_eq!(
        errno_of(call(&mut svc, &mut root, forget("a"))),
        Errno::BUSY
    );
    let mut bob = control(&mut svc, 3, BOB);
    assert_eq!(errno_of(call(&mut svc, &mut bob, forget("a"))), Errno::PERM);
    assert_eq!(
        errno_of(call(&mut svc, &mut root, forget("zz"))),
        Errno::NOENT
    );
    svc.close_session(&a, "test");
    let mut bob_vm = session(&svc, 4, BOB);
    assert_eq!(
        errno_of(call(&mut svc, &mut bob_vm, hello(Some("a")))),
        Errno::ACCESS
    );
    call(&mut svc, &mut root, forget("a")).unwrap();
    assert_eq!(read_at(&fd, 0, 12), [0; 12]);
    assert!(svc.ledger().vm(vm("a").uuid).is_none());
    // Bob may be VM a now, and finds nothing of Alice's.
    call(&mut svc, &mut bob_vm, hello(Some("a"))).unwrap();
    assert_eq!(
        errno_of(call(&mut svc, &mut bob_vm, open("f"))),
        Errno::NOENT
    );
}

// ---- STATUS: need to know ----

#[test]
fn status_shows_each_session_only_what_it_may_see() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut a2 = vm_session(&mut svc, 2, "a2", ALICE);
    let mut b = vm_session(&mut svc, 3, "b", BOB);
    let mut root = control(&mut svc, 4, ROOT);
    call(&mut svc, &mut a, create(4096)).unwrap();
    call(&mut svc, &mut a2, create_named("g", 4096)).unwrap();
    call(&mut svc, &mut b, create(4096)).unwrap();
    call(&mut svc, &mut root, create_named("pool", 4096)).unwrap();
    svc.close_session(&a2, "test");
    svc.advance_clock(100);

    // A lease: its VM's files and its own lease.
    assert_eq!(files_seen(&mut svc, &mut a), (1, vec!["f".into()]));
    assert_eq!(leases_seen(&mut svc, &mut a), (1, vec!["a".into()]));
    assert_eq!(
        scoped_files_seen(&mut svc, &mut a),
        (1, vec![("a/f".into(), 0)])
    );
    // A control session: the VMs its principal is tied to, with the age
    // of an orphan.
    let mut alice = control(&mut svc, 5, ALICE);
    assert_eq!(
        files_seen(&mut svc, &mut alice),
        (2, vec!["f".into(), "g".into()])
    );
    assert_eq!(leases_seen(&mut svc, &mut alice), (1, vec!["a".into()]));
    let (total, entries) = scoped_files_seen(&mut svc, &mut alice);
    assert_eq!(total, 2);
    assert_eq!(entries[0], ("a/f".into(), 0));
    assert_eq!(entries[1].0, "a2/g");
    assert!((100..=101).contains(&entries[1].1), "{entries:?}");
    let mut bob = control(&mut svc, 6, BOB);
    assert_eq!(files_seen(&mut svc, &mut bob), (1, vec!["f".into()]));
    assert_eq!(leases_seen(&mut svc, &mut bob), (1, vec!["b".into()]));
    // An operator: everything; names repeat across namespaces in section 0,
    // section 2 tells them apart.
    assert_eq!(
        files_seen(&mut svc, &mut root),
        (4, vec!["f".into(), "f".into(), "g".into(), "pool".into()])
    );
    assert_eq!(leases_seen(&mut svc, &mut root).0, 2);
    let (_, entries) = scoped_files_seen(&mut svc, &mut root);
    let labels: Vec<String> = entries.into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["a/f", "a2/g", "b/f", "pool"]);
    // Section 2 needs VM_SCOPE.
    let mut old = session(&svc, 7, ROOT);
    call(&mut svc, &mut old, hello_with(Features::empty(), None)).unwrap();
    assert_eq!(
        errno_of(status(&mut svc, &mut old, StatusSection::ScopedFiles)),
        Errno::OPNOTSUPP
    );
}

// ---- quotas and limits ----

#[test]
fn the_file_quota_is_per_principal_across_its_vms() {
    let mut svc = service_with(|c| c.quotas.files = 3);
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut a2 = vm_session(&mut svc, 2, "a2", ALICE);
    let mut b = vm_session(&mut svc, 3, "b", BOB);
    call(&mut svc, &mut a, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut a, create_named("f2", 4096)).unwrap();
    call(&mut svc, &mut a2, create_named("f1", 4096)).unwrap();
    let (errno, text) = refused(call(&mut svc, &mut a2, create_named("f2", 4096)));
    assert_eq!(errno, Errno::DQUOT);
    assert!(
        text.contains("file quota") && text.contains("uid 1000"),
        "{text}"
    );
    // Bob's quota is his own.
    call(&mut svc, &mut b, create_named("f1", 4096)).unwrap();
    // A file destroyed (and held by no one) makes room.
    call(&mut svc, &mut a, destroy("f1")).unwrap();
    call(&mut svc, &mut a2, create_named("f2", 4096)).unwrap();
}

#[test]
fn destroyed_memory_counts_against_the_quota_while_a_holder_may_reach_it() {
    let mut svc = service_with(|c| c.quotas.memory = 8 * MIB);
    // The process gmemd hands the file to: alive until dropped below.
    let holder = Process::spawn();
    let mut a = session_of(&svc, 1, ALICE, holder.pid());
    call(&mut svc, &mut a, hello(Some("a"))).unwrap();
    call(&mut svc, &mut a, create(6 * MIB)).unwrap();
    call(&mut svc, &mut a, destroy("f")).unwrap();
    assert_eq!(svc.ledger().retired_bytes(), 6 * MIB);
    let (errno, text) = refused(call(&mut svc, &mut a, create_named("g", 4 * MIB)));
    assert_eq!(errno, Errno::DQUOT, "{text}");
    assert!(text.contains("memory quota"), "{text}");
    // Another principal pays nothing for it.
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    call(&mut svc, &mut b, create(4 * MIB)).unwrap();
    // A new lease of the same principal starts where the last one left.
    svc.close_session(&a, "test");
    svc.upkeep();
    for (id, v) in [(3, "a"), (4, "a2")] {
        let mut again = vm_session(&mut svc, id, v, ALICE);
        assert_eq!(
            errno_of(call(&mut svc, &mut again, create_named("g", 4 * MIB))),
            Errno::DQUOT,
            "{v}"
        );
        svc.close_session(&again, "test");
    }
    // Once the holder has exited (its lease ended already), it is free.
    drop(holder);
    svc.upkeep();
    assert_eq!(svc.ledger().retired_bytes(), 0);
    let mut again = vm_session(&mut svc, 5, "a", ALICE);
    call(&mut svc, &mut again, create_named("g", 4 * MIB)).unwrap();
}

#[test]
fn destroyed_memory_of_a_process_gmemd_cannot_see_counts_while_its_lease_is_open() {
    let mut svc = service_with(|c| c.quotas.memory = 8 * MIB);
    // pid 0: a process in a pid namespace gmemd cannot see into.
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    call(&mut svc, &mut a, create(6 * MIB)).unwrap();
    call(&mut svc, &mut a, destroy("f")).unwrap();
    svc.upkeep();
    assert_eq!(
        errno_of(call(&mut svc, &mut a, create_named("g", 4 * MIB))),
        Errno::DQUOT
    );
    svc.close_session(&a, "test");
    assert_eq!(svc.ledger().retired_bytes(), 0);
    let mut again = vm_session(&mut svc, 2, "a", ALICE);
    call(&mut svc, &mut again, create_named("g", 4 * MIB)).unwrap();
}

#[test]
fn max_files_is_global_and_counts_operators_files() {
    let mut svc = service_with(|c| c.limits.max_files = 3);
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    call(&mut svc, &mut a, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut b, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut root, create_named("pool", 4096)).unwrap();
    for s in [&mut a, &mut b, &mut root] {
        let (errno, text) = refused(call(&mut svc, s, create_named("f2", 4096)));
        assert_eq!(errno, Errno::NFILE, "{text}");
        assert!(text.contains("--max-files"), "{text}");
    }
}

#[test]
fn orphans_expire_after_the_configured_time_without_a_lease() {
    let mut svc = service_with(|c| c.limits.expire_orphans = Some(Duration::from_secs(60)));
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    let fd = call_fd(&mut svc, &mut a, create(MIB));
    write_at(&fd, 0, b"alice's data");
    call(&mut svc, &mut b, create(MIB)).unwrap();
    call(&mut svc, &mut root, create_named("pool", MIB)).unwrap();
    svc.close_session(&a, "test");
    svc.upkeep();
    svc.advance_clock(30);
    svc.upkeep();
    assert_eq!(svc.ledger().vm(vm("a").uuid).unwrap().files, 1);
    assert_eq!(read_at(&fd, 0, 12), b"alice's data");
    svc.advance_clock(40);
    svc.upkeep();
    assert!(svc.ledger().vm(vm("a").uuid).is_none());
    assert_eq!(read_at(&fd, 0, 12), [0; 12]);
    // A VM with a lease, and operators' files, are no orphans.
    assert_eq!(svc.ledger().file_count(), 2);
    // The name is free again.
    vm_session(&mut svc, 4, "a", BOB);
}
