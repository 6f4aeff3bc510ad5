//! VMs and their ties: principals, one name one UUID, one lease, untie, idle time, patterns.

use super::*;

#[test]
fn a_vm_is_tied_to_the_principal_of_its_first_lease() {
    let mut l = setup();
    assert_eq!(l.vm(uuid("a")).unwrap().tie, uid_tie(ALICE));
    // Bob cannot take VM a's lease, neither while it runs nor after; he is
    // not told who runs it (no VmBusy with a pid).
    for running in [true, false] {
        let err = refuse(&mut l, |l| open(l, 3, "a", BOB));
        assert!(matches!(err, LedgerError::OtherPrincipal { .. }), "{err}");
        assert_eq!(err.errno(), Errno::ACCESS);
        let text = err.to_string();
        assert!(text.contains("another principal"), "{text}");
        assert!(text.contains("gmemctl forget"), "{text}");
        // Nor whose it is.
        assert!(!text.contains("uid"), "{text}");
        if running {
            l.close_lease(id(1), 0).unwrap();
        }
    }
    // Alice's relaunch is admitted and finds its file.
    open(&mut l, 3, "a", ALICE).unwrap();
    assert!(l.file(&key("a", "f")).is_ok());
    l.close_lease(id(3), 0).unwrap();
    // An operator is admitted too, and the tie stays Alice's.
    open_as(&mut l, 4, vm("a"), ROOT, true).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().tie, uid_tie(ALICE));
    l.assert_consistent();
}

#[test]
fn one_name_is_one_uuid() {
    let mut l = setup();
    let twin = VmId {
        uuid: Uuid([7; 16]),
        name: name("a"),
    };
    let renamed = VmId {
        uuid: uuid("a"),
        name: name("z"),
    };
    // Refused while VM a runs, after it stopped (it keeps its file), and
    // to operators too.
    for round in 0..2 {
        for (uid, operator) in [(ALICE, false), (ROOT, true)] {
            let err = refuse(&mut l, |l| open_as(l, 3, twin.clone(), uid, operator));
            assert_eq!(
                err,
                LedgerError::NameTaken {
                    name: name("a"),
                    uuid: uuid("a")
                }
            );
            assert_eq!(err.errno(), Errno::EXIST);
            let err = refuse(&mut l, |l| open_as(l, 3, renamed.clone(), uid, operator));
            assert_eq!(
                err,
                LedgerError::Renamed {
                    uuid: uuid("a"),
                    name: name("a")
                }
            );
            assert_eq!(err.errno(), Errno::EXIST);
        }
        // Another principal is refused as for the VM itself, and learns
        // not even the UUID behind the name.
        for other in [&twin, &renamed] {
            let err = refuse(&mut l, |l| open_as(l, 3, other.clone(), BOB, false));
            assert!(matches!(err, LedgerError::OtherPrincipal { .. }), "{err}");
        }
        let err = refuse(&mut l, |l| open_as(l, 3, twin.clone(), BOB, false));
        assert!(!err.to_string().contains(&uuid("a").to_string()), "{err}");
        if round == 0 {
            l.close_lease(id(1), 0).unwrap();
        }
    }
    // Once VM a is gone, its name may be another UUID's.
    l.remove_file(&key("a", "f"), false).unwrap();
    open_as(&mut l, 3, twin.clone(), BOB, false).unwrap();
    assert_eq!(l.find_vm(&VmSelector::Name(name("a"))), Ok(Uuid([7; 16])));
    l.assert_consistent();
}

#[test]
fn one_lease_per_vm() {
    let mut l = setup();
    let rules = TieRules::default();
    l.open_lease(
        id(3),
        vm("c"),
        Peer {
            pid: 77,
            uid: ALICE,
        },
        &principal(ALICE),
        &rules,
        false,
    )
    .unwrap();
    for (uid, operator) in [(ALICE, false), (ROOT, true)] {
        let err = refuse(&mut l, |l| {
            l.open_lease(
                id(4),
                vm("c"),
                Peer { pid: 78, uid },
                &principal(uid),
                &rules,
                operator,
            )
        });
        assert!(
            matches!(err, LedgerError::VmBusy { lease, pid: 77, .. } if lease == id(3)),
            "{err}"
        );
        assert_eq!(err.errno(), Errno::BUSY);
        assert!(err.to_string().contains("gmemctl revoke c"), "{err}");
    }
    // A lease id is never used twice.
    let err = refuse(&mut l, |l| open(l, 1, "d", ALICE));
    assert_eq!(err, LedgerError::LeaseExists(id(1)));
    l.close_lease(id(3), 0).unwrap();
    open(&mut l, 4, "c", ALICE).unwrap();
    assert_eq!(l.lease_of(&VmSelector::Name(name("c"))), Ok(id(4)));
    assert_eq!(l.lease_of(&VmSelector::Uuid(uuid("b"))), Ok(id(2)));
    assert!(matches!(
        l.lease_of(&VmSelector::Name(name("zz"))),
        Err(LedgerError::UnknownVm(_))
    ));
    // A known VM without a lease has no lease to find.
    l.close_lease(id(1), 0).unwrap();
    assert!(matches!(
        l.lease_of(&VmSelector::Name(name("a"))),
        Err(LedgerError::UnknownVm(_))
    ));
    assert_eq!(l.find_vm(&VmSelector::Name(name("a"))), Ok(uuid("a")));
}

#[test]
fn a_vm_is_untied_when_its_last_file_and_lease_are_gone() {
    let mut l = setup();
    // b has no files: its tie goes with its lease, and its name is free.
    l.close_lease(id(2), 0).unwrap();
    assert!(l.vm(uuid("b")).is_none());
    assert!(matches!(
        l.find_vm(&VmSelector::Name(name("b"))),
        Err(LedgerError::UnknownVmId(_))
    ));
    open(&mut l, 3, "b", ALICE).unwrap();
    assert_eq!(l.vm(uuid("b")).unwrap().tie, uid_tie(ALICE));
    // a keeps its tie while it has a file...
    l.close_lease(id(1), 0).unwrap();
    assert!(l.vm(uuid("a")).is_some());
    refuse(&mut l, |l| open(l, 4, "a", BOB));
    // ... or a lease.
    open(&mut l, 4, "a", ALICE).unwrap();
    l.remove_file(&key("a", "f"), false).unwrap();
    assert!(l.vm(uuid("a")).is_some());
    l.close_lease(id(4), 0).unwrap();
    assert!(l.vm(uuid("a")).is_none());
    open(&mut l, 5, "a", BOB).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().tie, uid_tie(BOB));
    l.assert_consistent();
}

#[test]
fn idle_since_is_set_when_the_lease_ends_and_cleared_by_the_next() {
    let mut l = setup();
    assert_eq!(l.vm(uuid("a")).unwrap().idle_since, None);
    l.close_lease(id(1), 30).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().idle_since, Some(30));
    // A refused lease does not make it look used.
    refuse(&mut l, |l| open(l, 3, "a", BOB));
    assert_eq!(l.vm(uuid("a")).unwrap().idle_since, Some(30));
    open(&mut l, 3, "a", ALICE).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().idle_since, None);
    l.close_lease(id(3), 45).unwrap();
    assert_eq!(l.vm(uuid("a")).unwrap().idle_since, Some(45));
    l.assert_consistent();
}

#[test]
fn cgroup_patterns_tie_every_start_of_a_vm_and_only_it() {
    let rules = TieRules {
        mode: "uid+cgroup".parse().unwrap(),
        cgroup_pattern: Some("/machine.slice/machine-qemu-*-{vm}.scope".into()),
        ..TieRules::default()
    };
    let in_cgroup = |cgroup: Option<&str>| Principal {
        uid: 107,
        cgroup: cgroup.map(str::to_owned),
        label: None,
    };
    let qemu =
        |n: u32, v: &str| in_cgroup(Some(&format!("/machine.slice/machine-qemu-{n}-{v}.scope")));
    let lease = |l: &mut Ledger, raw, v: &str, p: &Principal, rules: &TieRules| {
        l.open_lease(id(raw), vm(v), Peer { pid: 0, uid: p.uid }, p, rules, false)
    };
    let mut l = Ledger::new();
    lease(&mut l, 1, "web1", &qemu(1, "web1"), &rules).unwrap();
    l.add_file(key("web1", "ram"), memfd_spec(MIB), None)
        .unwrap();
    l.close_lease(id(1), 0).unwrap();
    // Same uid, but not web1's cgroup: another VM's QEMU, a shell, or a
    // process whose cgroup gmemd cannot read.
    for other in [
        qemu(2, "web2"),
        in_cgroup(Some("/user.slice")),
        in_cgroup(None),
    ] {
        let err = refuse(&mut l, |l| lease(l, 2, "web1", &other, &rules));
        assert!(matches!(err, LedgerError::OtherPrincipal { .. }), "{err}");
        assert_eq!(err.errno(), Errno::ACCESS);
    }
    // A relaunch in a new scope is the same VM.
    lease(&mut l, 3, "web1", &qemu(9, "web1"), &rules).unwrap();
    // web1's QEMU cannot even be web2's first lease: web2's pattern names web2.
    let err = refuse(&mut l, |l| lease(l, 4, "web2", &qemu(10, "web1"), &rules));
    assert!(
        matches!(err, LedgerError::Tie(TieError::Mismatch { .. })),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::ACCESS);
    // With `{vm}`, every VM has a tie (and so a quota) of its own.
    lease(&mut l, 5, "web2", &qemu(11, "web2"), &rules).unwrap();
    l.add_file(key("web2", "ram"), memfd_spec(2 * MIB), None)
        .unwrap();
    let web1 = l.vm(uuid("web1")).unwrap().tie.clone();
    let web2 = l.vm(uuid("web2")).unwrap().tie.clone();
    assert_ne!(web1, web2);
    assert_eq!(l.usage_of(&web1), (1, MIB));
    assert_eq!(l.usage_of(&web2), (1, 2 * MIB));

    // Without a pattern: the exact cgroup of the first lease; a first lease
    // whose cgroup is unknown cannot be tied at all.
    let exact = TieRules {
        mode: "uid+cgroup".parse().unwrap(),
        ..TieRules::default()
    };
    lease(&mut l, 6, "db", &in_cgroup(Some("/vm/db")), &exact).unwrap();
    l.add_file(key("db", "ram"), memfd_spec(MIB), None).unwrap();
    l.close_lease(id(6), 0).unwrap();
    refuse(&mut l, |l| {
        lease(l, 7, "db", &in_cgroup(Some("/vm/db2")), &exact)
    });
    lease(&mut l, 7, "db", &in_cgroup(Some("/vm/db")), &exact).unwrap();
    let err = refuse(&mut l, |l| lease(l, 8, "new", &in_cgroup(None), &exact));
    assert!(
        matches!(
            err,
            LedgerError::Tie(TieError::Unknown { what: "cgroup", .. })
        ),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::ACCESS);

    // A VM's own pattern (from the config file) is used over the global one.
    let mut own = rules.clone();
    own.vms.insert(
        name("special"),
        VmPatterns {
            cgroup: Some("/special/*".into()),
            ..VmPatterns::default()
        },
    );
    refuse(&mut l, |l| {
        lease(l, 8, "special", &qemu(1, "special"), &own)
    });
    lease(&mut l, 8, "special", &in_cgroup(Some("/special/1")), &own).unwrap();
    l.assert_consistent();
}

#[test]
fn a_vm_reserved_for_a_uid_cannot_be_taken_first_by_another() {
    let mut rules = TieRules::default();
    rules.vms.insert(
        name("prod"),
        VmPatterns {
            uid: Some(BOB),
            ..VmPatterns::default()
        },
    );
    let mut l = Ledger::new();
    let lease = |l: &mut Ledger, raw, uid| {
        l.open_lease(
            id(raw),
            vm("prod"),
            Peer { pid: 0, uid },
            &principal(uid),
            &rules,
            false,
        )
    };
    // Alice cannot squat the name before Bob's VM first starts.
    let err = refuse(&mut l, |l| lease(l, 1, ALICE));
    assert!(
        matches!(err, LedgerError::Tie(TieError::Mismatch { .. })),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::ACCESS);
    lease(&mut l, 2, BOB).unwrap();
    assert_eq!(l.vm(uuid("prod")).unwrap().tie, uid_tie(BOB));
}
