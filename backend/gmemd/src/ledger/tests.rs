//! Every invariant of the ledger, refusal by refusal, plus a random walk.
//! Every refusal is checked to leave the ledger exactly as it was.

use std::fmt::Debug;

use gmem_protocol::wire::{
    BindRequest, GuestAddress, LeaseId, MemoryKind, Name, Uuid, VmId, VmSelector,
    MAX_BINDINGS_PER_FILE,
};
use rustix::io::Errno;

use super::*;
use crate::principal::{Principal, Tie, TieError, TieRules, VmPatterns};

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

fn uuid(s: &str) -> Uuid {
    vm(s).uuid
}

fn memfd_spec(size: u64) -> FileSpec {
    FileSpec {
        size,
        kind: MemoryKind::Memfd,
        page_size: 4096,
    }
}

fn gmem_spec(size: u64) -> FileSpec {
    FileSpec {
        size,
        kind: MemoryKind::GuestMemfd,
        page_size: 4096,
    }
}

fn bind_req(file: &str, slot: u32, gpa: u64, offset: u64, size: u64) -> BindRequest {
    BindRequest::new(slot, GuestAddress(gpa), name(file), offset, size)
}

fn id(raw: u64) -> LeaseId {
    LeaseId::new(raw).unwrap()
}

fn principal(uid: u32) -> Principal {
    Principal {
        uid,
        ..Principal::default()
    }
}

fn uid_tie(uid: u32) -> Tie {
    Tie {
        uid,
        cgroup: None,
        label: None,
    }
}

/// `file` in VM `v`'s namespace.
fn key(v: &str, file: &str) -> FileKey {
    FileKey::vm(uuid(v), name(file))
}

/// `file` in the operators' namespace.
fn ops(file: &str) -> FileKey {
    FileKey::operators(name(file))
}

/// Opens lease `raw` for VM `v` as a client (not an operator) of `uid`,
/// VMs tied by uid alone (the default).
fn open(l: &mut Ledger, raw: u64, v: &str, uid: u32) -> LedgerResult<()> {
    open_as(l, raw, vm(v), uid, false)
}

fn open_as(l: &mut Ledger, raw: u64, vm: VmId, uid: u32, operator: bool) -> LedgerResult<()> {
    let peer = Peer { pid: 0, uid };
    l.open_lease(
        id(raw),
        vm,
        peer,
        &principal(uid),
        &TieRules::default(),
        operator,
    )
}

/// Lease 1 = VM a (Alice) with its file a/f (4 MiB); lease 2 = VM b (Bob),
/// no files.
fn setup() -> Ledger {
    let mut l = Ledger::new();
    open(&mut l, 1, "a", ALICE).unwrap();
    open(&mut l, 2, "b", BOB).unwrap();
    l.add_file(key("a", "f"), memfd_spec(4 * MIB), None)
        .unwrap();
    l
}

/// Everything the ledger holds: files, leases, VMs, names, retired memory.
fn snapshot(l: &Ledger) -> String {
    format!("{l:?}")
}

/// Runs `op`, which must be refused, and checks that the refusal changed
/// nothing and left the ledger consistent.
fn refuse<T: Debug>(
    l: &mut Ledger,
    op: impl FnOnce(&mut Ledger) -> LedgerResult<T>,
) -> LedgerError {
    let before = snapshot(l);
    let err = op(l).expect_err("refused");
    assert_eq!(snapshot(l), before, "refusal {err:?} changed the ledger");
    l.assert_consistent();
    err
}

fn owner_of(l: &Ledger, key: &FileKey) -> Option<(VmId, LeaseId)> {
    l.file(key)
        .unwrap()
        .owner
        .as_ref()
        .map(|o| (o.vm.clone(), o.lease))
}

// ---- bindings and owners (invariants 1, 2) ----

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

// ---- principals and VM identity (invariant 6) ----

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

// ---- namespaces (invariant 6) ----

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

// ---- holders and retired memory (accounting) ----

#[test]
fn a_holder_counts_while_its_process_or_its_lease_lives() {
    let mut l = setup();
    let f = key("a", "f");
    let holders = |l: &Ledger| l.file(&f).unwrap().holders().collect::<Vec<_>>();
    // pid 42 got the fd through lease 1, then handed the lease socket on
    // (a launcher starting QEMU) and exited.
    l.add_holder(&f, 42, Some(id(1))).unwrap();
    // A later fd without a lease keeps the lease it came through.
    l.add_holder(&f, 42, None).unwrap();
    assert_eq!(holders(&l), [(42, Some(id(1)))]);
    l.prune_holders(&mut |_| false);
    assert_eq!(holders(&l), [(42, Some(id(1)))], "lease 1 is open");
    l.close_lease(id(1), 0).unwrap();
    l.prune_holders(&mut |pid| pid == 42);
    assert_eq!(holders(&l), [(42, Some(id(1)))], "pid 42 lives");
    l.prune_holders(&mut |_| false);
    assert_eq!(holders(&l), []);
    // A holder from no lease counts while its process lives.
    l.add_holder(&f, 43, None).unwrap();
    l.prune_holders(&mut |pid| pid == 43);
    assert_eq!(holders(&l), [(43, None)]);
    // A later lease keeps the record current.
    open(&mut l, 3, "a", ALICE).unwrap();
    l.add_holder(&f, 43, Some(id(3))).unwrap();
    assert_eq!(holders(&l), [(43, Some(id(3)))]);
    let err = refuse(&mut l, |l| l.add_holder(&key("a", "nope"), 1, None));
    assert!(matches!(err, LedgerError::UnknownFile { .. }), "{err}");
    l.assert_consistent();
}

#[test]
fn a_removed_files_bytes_count_until_its_holder_is_dead_and_its_lease_closed() {
    let mut l = setup();
    let alice = uid_tie(ALICE);
    assert_eq!(l.usage_of(&alice), (1, 4 * MIB));
    // A file nobody received goes at once.
    l.add_file(key("a", "g"), memfd_spec(MIB), None).unwrap();
    l.remove_file(&key("a", "g"), false).unwrap();
    assert_eq!(l.retired_bytes(), 0);

    l.add_holder(&key("a", "f"), 42, Some(id(1))).unwrap();
    l.remove_file(&key("a", "f"), false).unwrap();
    assert_eq!(l.retired_bytes(), 4 * MIB);
    assert_eq!(l.usage_of(&alice), (0, 4 * MIB));
    assert_eq!(l.usage_of(&uid_tie(BOB)), (0, 0));
    // Process gone, lease open: whoever the lease went to may hold it.
    l.prune_holders(&mut |_| false);
    assert_eq!(l.usage_of(&alice), (0, 4 * MIB));
    // Lease closed (VM a untied with it), process alive.
    l.close_lease(id(1), 0).unwrap();
    assert!(l.vm(uuid("a")).is_none());
    l.prune_holders(&mut |pid| pid == 42);
    assert_eq!(l.usage_of(&alice), (0, 4 * MIB));
    assert_eq!(l.retired()[0].tie, Some(alice.clone()));
    // Both gone.
    l.prune_holders(&mut |_| false);
    assert_eq!(l.retired_bytes(), 0);
    assert!(l.retired().is_empty());
    assert_eq!(l.usage_of(&alice), (0, 0));
    l.assert_consistent();
}

#[test]
fn retired_memory_of_operators_files_and_of_scrubs_is_charged_too() {
    let mut l = setup();
    // An operators' file is charged to no principal, but it is retired.
    l.add_file(ops("pool"), memfd_spec(MIB), None).unwrap();
    l.add_holder(&ops("pool"), 7, None).unwrap();
    l.remove_file(&ops("pool"), false).unwrap();
    assert_eq!(l.retired().len(), 1);
    assert_eq!(
        (l.retired()[0].tie.as_ref(), l.retired_bytes()),
        (None, MIB)
    );
    // SCRUB swaps the inode: the old one is retired with its holders, the
    // file itself keeps counting, with no holders.
    l.add_holder(&key("a", "f"), 42, Some(id(1))).unwrap();
    l.replace_inode(&key("a", "f")).unwrap();
    assert_eq!(l.file(&key("a", "f")).unwrap().holders().count(), 0);
    assert_eq!(l.retired_bytes(), 5 * MIB);
    assert_eq!(l.usage_of(&uid_tie(ALICE)), (1, 8 * MIB));
    l.close_lease(id(1), 0).unwrap();
    l.prune_holders(&mut |_| false);
    assert_eq!(l.retired_bytes(), 0);
    assert_eq!(l.usage_of(&uid_tie(ALICE)), (1, 4 * MIB));
    let err = refuse(&mut l, |l| l.replace_inode(&key("a", "nope")));
    assert!(matches!(err, LedgerError::UnknownFile { .. }), "{err}");
    l.assert_consistent();
}

// ---- everything at once ----

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (small `n`).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

#[test]
fn pseudo_random_operations_keep_invariants() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut l = Ledger::new();
    let uids = [ALICE, BOB, ROOT];
    let vm_of = |rng: &mut Rng| {
        let v = vm(&format!("v{}", rng.below(5)));
        // Now and then a known name with another UUID, or a known UUID
        // with another name.
        match rng.below(16) {
            0 => VmId {
                uuid: uuid(&format!("v{}", rng.below(5))),
                name: v.name,
            },
            _ => v,
        }
    };
    let key_of = |rng: &mut Rng| {
        let file = name(&format!("f{}", rng.below(4)));
        match rng.below(6) {
            0 => FileKey::operators(file),
            n => FileKey::vm(uuid(&format!("v{}", n - 1)), file),
        }
    };
    let mut next_id = LeaseId::FIRST;
    let mut accepted = 0;
    for step in 0..20_000u64 {
        let open: Vec<LeaseId> = l.leases().map(|(id, _)| id).collect();
        let lease = |rng: &mut Rng| {
            if open.is_empty() || rng.below(8) == 0 {
                id(1 + rng.next() % 40)
            } else {
                open[rng.below(open.len())]
            }
        };
        let before = snapshot(&l);
        let ok = match rng.below(13) {
            0 | 1 => {
                let uid = uids[rng.below(3)];
                let v = vm_of(&mut rng);
                let ok = open_as(&mut l, next_id.get(), v, uid, uid == ROOT).is_ok();
                next_id = next_id.next();
                ok
            }
            2 => {
                let id = lease(&mut rng);
                l.close_lease(id, step).is_ok()
            }
            3..=5 => {
                let id = lease(&mut rng);
                let req = bind_req(
                    &format!("f{}", rng.below(4)),
                    u32::try_from(rng.below(8)).unwrap(),
                    (rng.next() % 32) * 4096,
                    (rng.next() % 18) * 4096,
                    (rng.next() % 6) * 4096,
                );
                l.bind(id, &req).is_ok()
            }
            6 => {
                let id = lease(&mut rng);
                l.unbind(id, u32::try_from(rng.below(8)).unwrap()).is_ok()
            }
            7 => {
                let spec = if rng.below(4) == 0 {
                    gmem_spec(16 * 4096)
                } else {
                    memfd_spec(16 * 4096)
                };
                let depositor = (spec.kind == MemoryKind::GuestMemfd).then(|| lease(&mut rng));
                l.add_file(key_of(&mut rng), spec, depositor).is_ok()
            }
            8 => l.remove_file(&key_of(&mut rng), rng.below(2) == 0).is_ok(),
            9 => {
                let (from, to) = (key_of(&mut rng), key_of(&mut rng));
                let checked = l.check_move(&from, &to).is_ok();
                let ok = l.move_file(&from, to).is_ok();
                assert_eq!(checked, ok, "check_move and move_file disagree");
                ok
            }
            10 => {
                let v = VmSelector::Name(name(&format!("v{}", rng.below(5))));
                l.forget(&v).is_ok()
            }
            11 => {
                let through = (rng.below(2) == 0).then(|| lease(&mut rng));
                let pid = u32::try_from(rng.below(4)).unwrap();
                l.add_holder(&key_of(&mut rng), pid, through).is_ok()
            }
            _ => {
                let alive = rng.next();
                l.prune_holders(&mut |pid| alive >> pid & 1 == 1);
                true
            }
        };
        if ok {
            accepted += 1;
        } else {
            assert_eq!(before, snapshot(&l), "a refusal changed the ledger");
        }
        l.assert_consistent();
        check_usage_adds_up(&l);
    }
    assert!(accepted > 5_000, "only {accepted} operations accepted");
}

/// Every byte gmemd counts is charged to exactly one principal, or is an
/// operators' file.
fn check_usage_adds_up(l: &Ledger) {
    let mut ties: Vec<Tie> = l
        .vms()
        .map(|v| v.tie.clone())
        .chain(l.retired().iter().filter_map(|r| r.tie.clone()))
        .collect();
    ties.sort();
    ties.dedup();
    let charged: u64 = ties.iter().map(|t| l.usage_of(t).1).sum();
    let operators: u64 = l.files_in(Space::Operators).map(|(_, f)| f.spec.size).sum();
    let operators_retired: u64 = l
        .retired()
        .iter()
        .filter(|r| r.tie.is_none())
        .map(|r| r.bytes)
        .sum();
    assert_eq!(
        charged + operators + operators_retired,
        l.total_size() + l.retired_bytes()
    );
}
