//! Tenants: principals at HELLO, namespaces, scoped names.

use super::*;

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
