//! TRANSFER and FORGET, and what STATUS shows to whom.

use super::*;

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
