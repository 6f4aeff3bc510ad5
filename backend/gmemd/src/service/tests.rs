//! Policy decisions of the service, without sockets: frames in, replies out.

use std::os::fd::OwnedFd;

use gmem_protocol::conn::Frame;
use gmem_protocol::wire::{
    BindRequest, CreateFlags, CreateRequest, DepositRequest, Features, GuestAddress,
    HandoffRequest, Header, Hello, MemoryKind, Name, Reply, RequestBody, RevokeReport, VmId,
    VmSelector,
};
use rustix::io::Errno;

use super::*;
use crate::config::Config;
use crate::ledger::Peer;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn service() -> Service {
    let mut config = Config {
        allowed_uids: vec![1000, 2000],
        admin_uids: vec![0],
        ..Config::default()
    };
    config.limits.max_total_memory = 64 << 20;
    config.limits.max_files_per_vm = 2;
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

fn errno_of(result: Result<Reply, Reply>) -> Errno {
    Errno::from_raw_os_error(-result.unwrap_err().status)
}

fn session(svc: &Service, id: u64, uid: u32) -> Session {
    svc.open_session(id, Peer { pid: 0, uid }, 0)
}

fn hello(vm: Option<&str>) -> RequestBody {
    RequestBody::Hello(Hello {
        features: Features::all(),
        vm: vm.map(|v| VmId::from_name(name(v))),
    })
}

fn vm_session(svc: &mut Service, id: u64, vm: &str, uid: u32) -> Session {
    let mut s = session(svc, id, uid);
    call(svc, &mut s, hello(Some(vm))).unwrap();
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

#[test]
fn handshake_first_and_once() {
    let mut svc = service();
    let mut s = session(&svc, 1, 0);
    let err = errno_of(call(&mut svc, &mut s, RequestBody::Open(name("x"))));
    assert_eq!(err, Errno::PROTO);
    let control = RequestBody::Hello(Hello {
        features: Features::empty(),
        vm: None,
    });
    call(&mut svc, &mut s, control.clone()).unwrap();
    assert_eq!(errno_of(call(&mut svc, &mut s, control)), Errno::PROTO);
    // SCRUB was not negotiated.
    let err = errno_of(call(&mut svc, &mut s, RequestBody::Scrub(name("x"))));
    assert_eq!(err, Errno::OPNOTSUPP);
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
    let mut root = vm_session(&mut svc, 1, "root-vm", 0);
    call(&mut svc, &mut root, create(4096)).unwrap();
}

#[test]
fn malformed_requests_get_their_errno_and_change_nothing() {
    let mut svc = service();
    let mut s = vm_session(&mut svc, 1, "a", 1000);
    let open = RequestBody::Open(name("x"));
    let mut bad = frame(&open, Vec::new());
    bad.payload.pop();
    bad.header.size -= 1;
    let reply = Reply::decode(&svc.serve(&mut s, bad).reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::INVAL.raw_os_error());
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let served = serve(&mut svc, &mut s, open, vec![memfd]);
    let reply = Reply::decode(&served.reply.payload).unwrap();
    assert_eq!(reply.status, -Errno::BADF.raw_os_error());
    assert!(!served.close);
    assert_eq!(svc.ledger().files().count(), 0);
}

#[test]
fn limits_are_enforced_per_vm() {
    let mut svc = service();
    let mut s = vm_session(&mut svc, 1, "a", 1000);
    let err = call(&mut svc, &mut s, create(128 << 20)).unwrap_err();
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
    let mut again = vm_session(&mut svc, 2, "a", 1000);
    assert_eq!(
        errno_of(call(&mut svc, &mut again, create(4096))),
        Errno::MFILE
    );
}

#[test]
fn revoke_needs_an_operator_and_returns_the_lease_it_ended() {
    let mut svc = service();
    let mut user = vm_session(&mut svc, 1, "a", 1000);
    let mut admin = vm_session(&mut svc, 2, "b", 0);
    let revoke_b = RequestBody::Revoke(VmSelector::Name(name("b")));
    assert_eq!(errno_of(call(&mut svc, &mut user, revoke_b)), Errno::PERM);
    let err = errno_of(call(&mut svc, &mut user, RequestBody::Scrub(name("x"))));
    assert_eq!(err, Errno::PERM);
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
fn a_vm_destroys_its_own_files_from_any_of_its_leases() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", 1000);
    let mut b = vm_session(&mut svc, 2, "b", 2000);
    call(&mut svc, &mut a, create(4096)).unwrap();
    let err = errno_of(call(&mut svc, &mut b, RequestBody::Destroy(name("f"))));
    assert_eq!(err, Errno::PERM);
    call(&mut svc, &mut a, RequestBody::Destroy(name("f"))).unwrap();
    // A new lease of the same VM (a relaunch) still owns what it made.
    call(&mut svc, &mut a, create(4096)).unwrap();
    svc.close_session(&a, "test");
    let mut a2 = vm_session(&mut svc, 3, "a", 1000);
    let err = errno_of(call(&mut svc, &mut b, RequestBody::Destroy(name("f"))));
    assert_eq!(err, Errno::PERM);
    call(&mut svc, &mut a2, RequestBody::Destroy(name("f"))).unwrap();
    // An operator destroys anyone's.
    call(&mut svc, &mut a2, create(4096)).unwrap();
    let mut root = vm_session(&mut svc, 4, "root", 0);
    call(&mut svc, &mut root, RequestBody::Destroy(name("f"))).unwrap();
}

#[test]
fn a_refused_deposit_leaves_the_fd_alone() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", 1000);
    let big = rustix::fs::memfd_create(
        "big",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&big, 128 << 20).unwrap();
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
    let mut ctl = session(&svc, 1, 1000);
    call(&mut svc, &mut ctl, hello(None)).unwrap();
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
    let mut a = vm_session(&mut svc, 1, "a", 1000);
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
