//! The request path: handshake, admission, malformed frames, limits, revoke, deposits, handoff.

use super::*;

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
    let served = svc.serve(&mut s, garbage, None);
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
    let reply = Reply::decode(&svc.serve(&mut s, bad, None).reply.payload).unwrap();
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
