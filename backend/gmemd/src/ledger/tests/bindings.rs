//! Bindings: validation, owners, guest_memfd depositors, a lease's end, removal.

use super::*;

#[test]
fn first_bind_sets_owner_last_unbind_clears() {
    let mut l = setup();
    assert!(l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap());
    assert!(!l.bind(id(1), &bind_req("f", 1, MIB, MIB, MIB)).unwrap());
    assert_eq!(owner_of(&l, &key("a", "f")), Some((vm("a"), id(1))));

    assert!(!l.unbind(id(1), 0).unwrap().1);
    assert!(owner_of(&l, &key("a", "f")).is_some());
    let (binding, cleared) = l.unbind(id(1), 1).unwrap();
    assert!(cleared);
    assert_eq!((binding.slot, binding.file), (1, name("f")));
    assert_eq!(owner_of(&l, &key("a", "f")), None);

    let err = refuse(&mut l, |l| l.unbind(id(1), 1));
    assert_eq!(err, LedgerError::UnknownSlot { slot: 1 });
    assert_eq!(err.errno(), Errno::NOENT);
    let err = refuse(&mut l, |l| l.unbind(id(9), 0));
    assert_eq!(err, LedgerError::UnknownLease(id(9)));
    let err = refuse(&mut l, |l| l.bind(id(9), &bind_req("f", 0, 0, 0, MIB)));
    assert_eq!(err, LedgerError::UnknownLease(id(9)));
    l.assert_consistent();
}

#[test]
fn each_validation_refuses_with_its_own_error_and_changes_nothing() {
    let mut l = setup();
    l.bind(id(1), &bind_req("f", 5, 0x10_0000, 0, MIB)).unwrap();
    type Check = fn(&LedgerError) -> bool;
    let cases: Vec<(BindRequest, Check)> = vec![
        (bind_req("f", 0, 0, 100, 4096), |e| {
            matches!(
                e,
                LedgerError::Misaligned {
                    field: "offset",
                    ..
                }
            )
        }),
        (bind_req("f", 0, 0, MIB, 100), |e| {
            matches!(e, LedgerError::Misaligned { field: "size", .. })
        }),
        (bind_req("f", 0, 0x123, MIB, 4096), |e| {
            matches!(e, LedgerError::Misaligned { field: "gpa", .. })
        }),
        (bind_req("f", 0, 0, MIB, 0), |e| {
            matches!(e, LedgerError::EmptyBinding)
        }),
        (bind_req("f", 0, 0, 3 * MIB, 2 * MIB), |e| {
            matches!(e, LedgerError::PastEnd { .. })
        }),
        (bind_req("f", 0, 0, u64::MAX - 4095, 8192), |e| {
            matches!(e, LedgerError::PastEnd { .. })
        }),
        (bind_req("f", 0, u64::MAX - 4095, MIB, 8192), |e| {
            matches!(e, LedgerError::GuestOverflow { .. })
        }),
        (bind_req("f", 0, 0x100_0000, MIB - 4096, 8192), |e| {
            matches!(e, LedgerError::FileRangeOverlap { slot: 5, .. })
        }),
        (bind_req("f", 5, 0x100_0000, 2 * MIB, 4096), |e| {
            matches!(e, LedgerError::SlotTaken { slot: 5 })
        }),
        (
            bind_req("f", 6, 0x10_0000 + MIB - 4096, 2 * MIB, 8192),
            |e| matches!(e, LedgerError::GuestOverlap { slot: 5, .. }),
        ),
        (
            bind_req("nope", 6, 0, 0, 4096),
            |e| matches!(e, LedgerError::UnknownFile { file } if file == "a/nope"),
        ),
    ];
    let mut errnos = Vec::new();
    for (req, check) in cases {
        let err = refuse(&mut l, |l| l.bind(id(1), &req));
        assert!(check(&err), "{req:?} gave {err:?}");
        errnos.push(err.errno());
    }
    // The main classes are told apart by errno too.
    assert!(errnos.contains(&Errno::INVAL) && errnos.contains(&Errno::RANGE));
    assert!(errnos.contains(&Errno::EXIST) && errnos.contains(&Errno::ADDRINUSE));
    assert!(errnos.contains(&Errno::BUSY) && errnos.contains(&Errno::OVERFLOW));
}

#[test]
fn the_same_bind_again_is_told_its_slot_is_taken() {
    // A BIND sent again after a gmemd restart (PROTOCOL §14.4) must get
    // EEXIST, which the client resolves against STATUS, not EBUSY.
    let mut l = setup();
    let req = bind_req("f", 5, 0x10_0000, 0, MIB);
    l.bind(id(1), &req).unwrap();
    let err = refuse(&mut l, |l| l.bind(id(1), &req));
    assert_eq!(err, LedgerError::SlotTaken { slot: 5 });
    assert_eq!(err.errno(), Errno::EXIST);
    // Overlapping it from another slot is still EBUSY.
    let err = refuse(&mut l, |l| l.bind(id(1), &bind_req("f", 6, 0, 0, MIB)));
    assert!(
        matches!(err, LedgerError::FileRangeOverlap { slot: 5, .. }),
        "{err}"
    );
}

#[test]
fn adjacent_ranges_are_not_overlaps() {
    let mut l = setup();
    l.bind(id(1), &bind_req("f", 0, 0, MIB, MIB)).unwrap();
    l.bind(id(1), &bind_req("f", 1, MIB, 0, MIB)).unwrap();
    l.bind(id(1), &bind_req("f", 2, 2 * MIB, 2 * MIB, 2 * MIB))
        .unwrap();
    l.assert_consistent();
}

#[test]
fn same_slot_and_gpa_are_per_vm() {
    let mut l = setup();
    l.add_file(key("b", "g"), memfd_spec(MIB), None).unwrap();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap();
    l.bind(id(2), &bind_req("g", 0, 0, 0, MIB)).unwrap();
    l.assert_consistent();
}

#[test]
fn bindings_per_file_are_bounded() {
    let mut l = Ledger::new();
    open(&mut l, 1, "a", ALICE).unwrap();
    l.add_file(key("a", "f"), memfd_spec(1 << 30), None)
        .unwrap();
    for i in 0..MAX_BINDINGS_PER_FILE as u64 {
        let slot = u32::try_from(i).unwrap();
        l.bind(id(1), &bind_req("f", slot, i * 4096, i * 4096, 4096))
            .unwrap();
    }
    let err = refuse(&mut l, |l| {
        l.bind(id(1), &bind_req("f", 999, 1 << 40, 1 << 29, 4096))
    });
    assert!(matches!(err, LedgerError::TooManyBindings { .. }), "{err}");
    assert_eq!(err.errno(), Errno::NOSPC);
}

#[test]
fn a_guest_memfd_binds_only_through_the_lease_that_deposited_it() {
    let mut l = setup();
    l.add_file(key("a", "gm"), gmem_spec(4 * MIB), Some(id(1)))
        .unwrap();
    l.bind(id(1), &bind_req("gm", 0, 0, 0, MIB)).unwrap();
    l.unbind(id(1), 0).unwrap();
    // A relaunch of the same VM is another KVM VM: the kernel would refuse.
    l.close_lease(id(1), 0).unwrap();
    open(&mut l, 3, "a", ALICE).unwrap();
    let err = refuse(&mut l, |l| l.bind(id(3), &bind_req("gm", 0, 0, 0, MIB)));
    assert!(
        matches!(&err, LedgerError::ForeignGuestMemfd { file } if file == "a/gm"),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::PERM);
    // A guest_memfd nobody deposited binds nowhere.
    l.add_file(key("a", "orphan"), gmem_spec(MIB), None)
        .unwrap();
    let err = refuse(&mut l, |l| l.bind(id(3), &bind_req("orphan", 0, 0, 0, MIB)));
    assert!(
        matches!(err, LedgerError::ForeignGuestMemfd { .. }),
        "{err}"
    );
}

#[test]
fn closing_a_lease_drops_all_bindings_at_once_and_clears_owners() {
    let mut l = setup();
    l.add_file(key("a", "g"), memfd_spec(MIB), None).unwrap();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap();
    l.bind(id(1), &bind_req("f", 1, MIB, MIB, MIB)).unwrap();
    l.bind(id(1), &bind_req("g", 2, 4 * MIB, 0, MIB)).unwrap();
    let end = l.close_lease(id(1), 7).unwrap();
    assert_eq!(end.vm, vm("a"));
    assert_eq!(end.bindings.len(), 3);
    assert_eq!(end.released, vec![name("f"), name("g")]);
    assert!(l
        .files()
        .all(|(_, f)| f.owner.is_none() && f.binding_count() == 0));
    // The files stay with their VM: they are the VM's, not the lease's.
    assert_eq!(l.vm(uuid("a")).unwrap().files, 2);
    assert_eq!(l.file_count(), 2);
    // The VM's next lease binds them again.
    open(&mut l, 3, "a", ALICE).unwrap();
    assert!(l.bind(id(3), &bind_req("f", 0, 0, 0, MIB)).unwrap());
    let err = refuse(&mut l, |l| l.close_lease(id(1), 8));
    assert_eq!(err, LedgerError::UnknownLease(id(1)));
}

#[test]
fn removal_rules() {
    let mut l = setup();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB)).unwrap();
    let err = refuse(&mut l, |l| l.remove_file(&key("a", "f"), false));
    assert!(
        matches!(&err, LedgerError::FileBound { bindings: 1, owner, .. } if *owner == vm("a")),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::BUSY);
    assert!(err.to_string().contains("gmemctl revoke a"), "{err}");
    assert!(l.check_remove(&key("a", "f"), false).is_err());
    assert!(l.check_remove(&key("a", "f"), true).is_ok());
    // An operator removes it, dropping its bindings.
    let (dropped, record) = l.remove_file(&key("a", "f"), true).unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(record.spec, memfd_spec(4 * MIB));
    assert_eq!(l.lease(id(1)).unwrap().bindings().count(), 0);
    assert_eq!((l.total_size(), l.file_count()), (0, 0));
    let err = refuse(&mut l, |l| l.remove_file(&key("a", "f"), true));
    assert!(
        matches!(&err, LedgerError::UnknownFile { file } if file == "a/f"),
        "{err}"
    );
}
