//! Namespaces: a VM binds its own files only; operators' files; forget; moves.

use super::*;

#[test]
fn a_vm_binds_only_files_of_its_own_namespace() {
    let mut l = setup();
    // a's f is simply not there for b.
    let err = refuse(&mut l, |l| l.bind(id(2), &bind_req("f", 0, 0, 0, MIB)));
    assert!(
        matches!(&err, LedgerError::UnknownFile { file } if file == "b/f"),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::NOENT);
    // Nor is an operators' file, for anyone.
    l.add_file(ops("pool"), memfd_spec(MIB), None).unwrap();
    let err = refuse(&mut l, |l| l.bind(id(1), &bind_req("pool", 0, 0, 0, MIB)));
    assert!(matches!(err, LedgerError::UnknownFile { .. }), "{err}");
    // b's own f is another file, bound while a binds its own.
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap();
    l.add_file(key("b", "f"), memfd_spec(MIB), None).unwrap();
    assert!(l.bind(id(2), &bind_req("f", 0, 0, 0, MIB)).unwrap());
    assert_eq!(owner_of(&l, &key("a", "f")), Some((vm("a"), id(1))));
    assert_eq!(owner_of(&l, &key("b", "f")), Some((vm("b"), id(2))));
    l.assert_consistent();
}

#[test]
fn the_same_name_in_two_vms_is_two_files() {
    let mut l = setup();
    l.add_file(key("b", "f"), memfd_spec(MIB), None).unwrap();
    assert_eq!(l.file(&key("a", "f")).unwrap().spec.size, 4 * MIB);
    assert_eq!(l.file(&key("b", "f")).unwrap().spec.size, MIB);
    assert_eq!((l.file_count(), l.total_size()), (2, 5 * MIB));
    let err = refuse(&mut l, |l| l.add_file(key("a", "f"), memfd_spec(MIB), None));
    assert!(
        matches!(&err, LedgerError::FileExists { file } if file == "a/f"),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::EXIST);
    l.remove_file(&key("b", "f"), false).unwrap();
    assert!(l.file(&key("a", "f")).is_ok());
    assert_eq!(
        (
            l.vm(uuid("a")).unwrap().files,
            l.vm(uuid("b")).unwrap().files
        ),
        (1, 0)
    );
    l.assert_consistent();
}

#[test]
fn operators_files_are_a_namespace_of_their_own() {
    let mut l = setup();
    l.add_file(ops("f"), memfd_spec(MIB), None).unwrap();
    l.add_file(key("b", "g"), memfd_spec(MIB), None).unwrap();
    let names =
        |l: &Ledger, space| -> Vec<String> { l.files_in(space).map(|(k, _)| l.label(k)).collect() };
    assert_eq!(names(&l, Space::Operators), ["f"]);
    assert_eq!(names(&l, Space::Vm(uuid("a"))), ["a/f"]);
    assert_eq!(names(&l, Space::Vm(uuid("b"))), ["b/g"]);
    assert_eq!(names(&l, Space::Vm(uuid("zz"))), Vec::<String>::new());
    let err = refuse(&mut l, |l| l.add_file(ops("f"), memfd_spec(MIB), None));
    assert!(
        matches!(&err, LedgerError::FileExists { file } if file == "f"),
        "{err}"
    );
    // An operators' file counts against no VM.
    assert_eq!(l.vm(uuid("a")).unwrap().files, 1);
    assert_eq!(l.total_size(), 6 * MIB);
    // A VM's file needs the VM known (it has had a lease).
    let err = refuse(&mut l, |l| {
        l.add_file(key("zz", "f"), memfd_spec(MIB), None)
    });
    assert!(matches!(err, LedgerError::UnknownVmId(_)), "{err}");
    assert_eq!(err.errno(), Errno::NOENT);
    l.remove_file(&ops("f"), false).unwrap();
    assert!(l.file(&key("a", "f")).is_ok());
    l.assert_consistent();
}

// ---- forget and move (TRANSFER, FORGET) ----

#[test]
fn forget_is_refused_while_leased_then_destroys_files_and_frees_the_name() {
    let mut l = setup();
    l.add_file(key("a", "g"), memfd_spec(MIB), None).unwrap();
    l.add_holder(&key("a", "f"), 42, Some(id(1))).unwrap();
    let err = refuse(&mut l, |l| l.forget(&VmSelector::Name(name("a"))));
    assert_eq!(
        err,
        LedgerError::VmLeased {
            vm: vm("a"),
            lease: id(1)
        }
    );
    assert_eq!(err.errno(), Errno::BUSY);
    assert!(err.to_string().contains("gmemctl revoke a"), "{err}");
    let err = refuse(&mut l, |l| l.forget(&VmSelector::Name(name("zz"))));
    assert!(matches!(err, LedgerError::UnknownVmId(_)), "{err}");
    assert_eq!(err.errno(), Errno::NOENT);

    l.close_lease(id(1), 0).unwrap();
    let (entry, files) = l.forget(&VmSelector::Uuid(uuid("a"))).unwrap();
    assert_eq!((entry.vm, entry.tie), (vm("a"), uid_tie(ALICE)));
    assert_eq!(
        files,
        vec![
            (key("a", "f"), memfd_spec(4 * MIB)),
            (key("a", "g"), memfd_spec(MIB))
        ]
    );
    assert!(l.vm(uuid("a")).is_none());
    assert_eq!((l.file_count(), l.total_size()), (0, 0));
    // What pid 42 may still hold stays charged to Alice.
    assert_eq!(l.retired_bytes(), 4 * MIB);
    assert_eq!(l.usage_of(&uid_tie(ALICE)), (0, 4 * MIB));
    // UUID and name are free for anyone.
    open(&mut l, 3, "a", BOB).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().tie, uid_tie(BOB));
    assert!(l.file(&key("a", "f")).is_err());
    l.assert_consistent();
}

#[test]
fn move_refusals_change_nothing() {
    let mut l = setup();
    l.add_file(key("a", "g"), memfd_spec(MIB), None).unwrap();
    l.add_file(key("a", "gm"), gmem_spec(MIB), Some(id(1)))
        .unwrap();
    l.add_file(ops("pool"), memfd_spec(MIB), None).unwrap();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap();
    let unknown = FileKey::vm(Uuid([9; 16]), name("g"));
    type Check = fn(&LedgerError) -> bool;
    let cases: Vec<(FileKey, FileKey, Errno, Check)> = vec![
        // Bound, even for an operator: the VMM maps the old inode.
        (key("a", "f"), key("b", "f"), Errno::BUSY, |e| {
            matches!(e, LedgerError::FileBound { .. })
        }),
        // A guest_memfd never moves.
        (key("a", "gm"), key("b", "gm"), Errno::PERM, |e| {
            matches!(e, LedgerError::GuestMemfdStays { .. })
        }),
        (
            key("a", "g"),
            key("a", "f"),
            Errno::EXIST,
            |e| matches!(e, LedgerError::FileExists { file } if file == "a/f"),
        ),
        (
            key("a", "g"),
            ops("pool"),
            Errno::EXIST,
            |e| matches!(e, LedgerError::FileExists { file } if file == "pool"),
        ),
        (key("a", "g"), key("a", "g"), Errno::EXIST, |e| {
            matches!(e, LedgerError::FileExists { .. })
        }),
        (key("a", "g"), unknown, Errno::NOENT, |e| {
            matches!(e, LedgerError::UnknownVmId(_))
        }),
        (key("a", "nope"), key("b", "x"), Errno::NOENT, |e| {
            matches!(e, LedgerError::UnknownFile { .. })
        }),
    ];
    for (from, to, errno, check) in cases {
        let checked = l.check_move(&from, &to).unwrap_err();
        let err = refuse(&mut l, |l| l.move_file(&from, to.clone()));
        assert_eq!(checked, err, "{from} -> {to}");
        assert!(check(&err), "{from} -> {to} gave {err:?}");
        assert_eq!(err.errno(), errno, "{from} -> {to}");
    }
}

#[test]
fn a_moved_file_arrives_without_holders_and_its_old_inode_is_retired() {
    let mut l = setup();
    l.add_file(key("a", "g"), memfd_spec(MIB), None).unwrap();
    l.add_holder(&key("a", "g"), 42, Some(id(1))).unwrap();
    let spec = l.move_file(&key("a", "g"), key("b", "h")).unwrap();
    assert_eq!(spec, memfd_spec(MIB));
    assert!(l.file(&key("a", "g")).is_err());
    let moved = l.file(&key("b", "h")).unwrap();
    assert_eq!(moved.holders().count(), 0);
    assert_eq!(moved.depositor(), None);
    let (a, b) = (l.vm(uuid("a")).unwrap(), l.vm(uuid("b")).unwrap());
    assert_eq!((a.files, a.bytes, b.files, b.bytes), (1, 4 * MIB, 1, MIB));
    // Whoever kept a/g's fd still reaches the old inode: Alice pays for it.
    assert_eq!(l.retired_bytes(), MIB);
    assert_eq!(l.usage_of(&uid_tie(ALICE)), (1, 5 * MIB));
    assert_eq!(l.usage_of(&uid_tie(BOB)), (1, MIB));
    // Operators' files move to a VM and back.
    l.add_file(ops("pool"), memfd_spec(MIB), None).unwrap();
    l.move_file(&ops("pool"), key("a", "pool")).unwrap();
    l.move_file(&key("b", "h"), ops("h")).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().files, 2);
    assert_eq!(l.vm(uuid("b")).unwrap().files, 0);
    assert!(l.file(&ops("h")).is_ok());
    assert_eq!(l.total_size(), 6 * MIB);
    l.assert_consistent();
}

#[test]
fn moving_a_vms_last_file_away_unties_it_within_its_namespace_does_not() {
    let mut l = setup();
    l.close_lease(id(1), 0).unwrap();
    l.move_file(&key("a", "f"), key("a", "f2")).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().files, 1);
    l.move_file(&key("a", "f2"), key("b", "f")).unwrap();
    assert!(l.vm(uuid("a")).is_none());
    open(&mut l, 3, "a", BOB).unwrap();
    l.assert_consistent();
}
