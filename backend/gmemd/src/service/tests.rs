//! Policy decisions of the service, without sockets.

use gmem_protocol::wire::{
    BindRequest, CreateFlags, CreateRequest, Features, Hello, MemoryKind, Name, Reply, RequestBody,
    RevokeReport, VmId, VmSelector,
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
        allowed_uids: vec![0, 1000, 2000],
        admin_uids: vec![0],
        ..Config::default()
    };
    config.limits.max_total_memory = 64 << 20;
    config.limits.max_files_per_lease = 2;
    Service::new(config)
}

fn call(svc: &mut Service, s: &mut Session, req: RequestBody) -> Result<Reply, Reply> {
    let resp = svc.handle(s, req, Vec::new());
    if resp.reply.status == 0 {
        Ok(resp.reply)
    } else {
        Err(resp.reply)
    }
}

fn vm_session(svc: &mut Service, id: u64, vm: &str, uid: u32) -> Session {
    let mut s = svc.open_session(id, Peer { pid: 0, uid });
    call(
        svc,
        &mut s,
        RequestBody::Hello(Hello {
            features: Features::all(),
            vm: Some(VmId::from_name(name(vm))),
        }),
    )
    .unwrap();
    s
}

fn create(size: u64) -> RequestBody {
    RequestBody::Create(CreateRequest {
        name: name("f"),
        size,
        kind: MemoryKind::Memfd,
        flags: CreateFlags::empty(),
    })
}

#[test]
fn handshake_first_and_once() {
    let mut svc = service();
    let mut s = svc.open_session(1, Peer { pid: 0, uid: 0 });
    let err = call(&mut svc, &mut s, RequestBody::Open(name("x"))).unwrap_err();
    assert_eq!(err.status, -Errno::PROTO.raw_os_error());
    call(
        &mut svc,
        &mut s,
        RequestBody::Hello(Hello {
            features: Features::empty(),
            vm: None,
        }),
    )
    .unwrap();
    let again = RequestBody::Hello(Hello {
        features: Features::empty(),
        vm: None,
    });
    assert!(call(&mut svc, &mut s, again).is_err());
    // SCRUB was not negotiated.
    let err = call(&mut svc, &mut s, RequestBody::Scrub(name("x"))).unwrap_err();
    assert_eq!(err.status, -Errno::OPNOTSUPP.raw_os_error());
}

#[test]
fn disallowed_uid_is_refused_and_closed() {
    let mut svc = service();
    let mut s = svc.open_session(1, Peer { pid: 0, uid: 4242 });
    let resp = svc.handle(
        &mut s,
        RequestBody::Hello(Hello {
            features: Features::empty(),
            vm: None,
        }),
        Vec::new(),
    );
    assert_eq!(resp.reply.status, -Errno::ACCESS.raw_os_error());
    assert!(resp.reply.text.contains("uid 4242"));
    assert!(resp.close);
}

#[test]
fn limits_are_enforced() {
    let mut svc = service();
    let mut s = vm_session(&mut svc, 1, "a", 1000);
    let err = call(&mut svc, &mut s, create(128 << 20)).unwrap_err();
    assert_eq!(err.status, -Errno::NOSPC.raw_os_error());
    assert!(err.text.contains("memory limit"));
    for n in ["a1", "a2"] {
        let req = RequestBody::Create(CreateRequest {
            name: name(n),
            size: 4096,
            kind: MemoryKind::Memfd,
            flags: CreateFlags::empty(),
        });
        call(&mut svc, &mut s, req).unwrap();
    }
    let err = call(&mut svc, &mut s, create(4096)).unwrap_err();
    assert_eq!(err.status, -Errno::MFILE.raw_os_error());
}

#[test]
fn operator_requests_need_an_admin() {
    let mut svc = service();
    let mut user = vm_session(&mut svc, 1, "a", 1000);
    let mut admin = vm_session(&mut svc, 2, "b", 0);
    let err = call(
        &mut svc,
        &mut user,
        RequestBody::Revoke(VmSelector::Name(name("b"))),
    )
    .unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
    let err = call(&mut svc, &mut user, RequestBody::Scrub(name("x"))).unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
    let report = call(
        &mut svc,
        &mut admin,
        RequestBody::Revoke(VmSelector::Name(name("a"))),
    )
    .unwrap();
    assert_eq!(RevokeReport::decode(&report.body).unwrap().leases, 1);
    assert_eq!(svc.take_revoked(), vec![user.lease().unwrap()]);
    // Its connection closing later finds nothing left to end.
    svc.close_session(&user, "closed");
}

#[test]
fn disallowed_peers_are_cut_off_even_for_malformed_messages() {
    let mut svc = service();
    let mut s = svc.open_session(1, Peer { pid: 0, uid: 4242 });
    let mut handler = SessionHandler {
        service: &mut svc,
        session: &mut s,
    };
    let frame = gmem_protocol::conn::Frame {
        header: gmem_protocol::wire::Header {
            code: 999,
            is_reply: false,
            size: 0,
        },
        payload: Vec::new(),
        fds: Vec::new(),
    };
    let out = gmem_protocol::server::handle_frame(&mut handler, frame);
    assert!(out.close);
    assert_eq!(
        Reply::decode(&out.payload).unwrap().status,
        -Errno::ACCESS.raw_os_error()
    );
}

#[test]
fn only_operators_destroy_what_another_lease_made() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "a", 1000);
    let mut b = vm_session(&mut svc, 2, "b", 2000);
    call(&mut svc, &mut a, create(4096)).unwrap();
    let err = call(&mut svc, &mut b, RequestBody::Destroy(name("f"))).unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
    call(&mut svc, &mut a, RequestBody::Destroy(name("f"))).unwrap();
    // Once its lease is gone, the creator is an ordinary user again.
    call(&mut svc, &mut a, create(4096)).unwrap();
    svc.close_session(&a, "test");
    let mut a2 = vm_session(&mut svc, 3, "a", 1000);
    let err = call(&mut svc, &mut a2, RequestBody::Destroy(name("f"))).unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
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
    let request = RequestBody::Deposit(gmem_protocol::wire::DepositRequest {
        name: name("dep"),
        kind: MemoryKind::Memfd,
    });
    let dup = big.try_clone().unwrap();
    let resp = svc.handle(&mut a, request, vec![dup]);
    assert_eq!(resp.reply.status, -Errno::NOSPC.raw_os_error());
    assert!(rustix::fs::fcntl_get_seals(&big).unwrap().is_empty());
}

#[test]
fn control_sessions_cannot_bind_and_non_admins_get_no_fds() {
    let mut svc = service();
    let mut ctl = svc.open_session(1, Peer { pid: 0, uid: 1000 });
    call(
        &mut svc,
        &mut ctl,
        RequestBody::Hello(Hello {
            features: Features::all(),
            vm: None,
        }),
    )
    .unwrap();
    let err = call(&mut svc, &mut ctl, create(4096)).unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
    let bind = RequestBody::Bind(BindRequest {
        slot: 0,
        gpa: 0,
        name: name("f"),
        offset: 0,
        size: 4096,
    });
    let err = call(&mut svc, &mut ctl, bind).unwrap_err();
    assert_eq!(err.status, -Errno::PERM.raw_os_error());
}
