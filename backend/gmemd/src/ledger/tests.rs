//! Every invariant of the ledger, refusal by refusal, plus a random walk.

use gmem_protocol::wire::{
    BindRequest, GuestAddress, LeaseId, MemoryKind, Name, Uuid, VmId, VmSelector,
    MAX_BINDINGS_PER_FILE,
};
use rustix::io::Errno;

use super::*;

const MIB: u64 = 1 << 20;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn vm(s: &str) -> VmId {
    VmId::from_name(name(s))
}

fn memfd_spec(size: u64) -> FileSpec {
    FileSpec {
        size,
        kind: MemoryKind::Memfd,
        page_size: 4096,
    }
}

fn bind_req(file: &str, slot: u32, gpa: u64, offset: u64, size: u64) -> BindRequest {
    BindRequest::new(slot, GuestAddress(gpa), name(file), offset, size)
}

fn id(raw: u64) -> LeaseId {
    LeaseId::new(raw).unwrap()
}

fn never_alive(_: u32) -> bool {
    false
}

/// Ledger with file "f" (4 MiB), lease 1 = vm a, lease 2 = vm b.
fn setup() -> Ledger {
    let mut l = Ledger::new();
    l.add_file(name("f"), memfd_spec(4 * MIB), None).unwrap();
    l.open_lease(id(1), vm("a"), Peer::default()).unwrap();
    l.open_lease(id(2), vm("b"), Peer::default()).unwrap();
    l
}

fn snapshot(l: &Ledger) -> String {
    format!("{:?} {:?}", l.files, l.leases)
}

#[test]
fn first_bind_sets_owner_other_vm_refused_last_unbind_clears() {
    let mut l = setup();
    assert!(l
        .bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap());
    assert!(!l
        .bind(id(1), &bind_req("f", 1, MIB, MIB, MIB), &mut never_alive)
        .unwrap());
    let err = l
        .bind(id(2), &bind_req("f", 0, 0, 2 * MIB, MIB), &mut never_alive)
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::NotOwner { owner, lease, .. } if owner.name.as_str() == "a" && *lease == id(1))
    );
    assert!(err.to_string().contains("owned by VM a"));
    assert_eq!(err.errno(), Errno::BUSY);

    assert!(!l.unbind(id(1), 0).unwrap().1);
    assert!(l.file(&name("f")).unwrap().owner.is_some());
    assert!(l.unbind(id(1), 1).unwrap().1);
    assert!(l.file(&name("f")).unwrap().owner.is_none());
    assert!(l
        .bind(id(2), &bind_req("f", 0, 0, 2 * MIB, MIB), &mut never_alive)
        .unwrap());
    l.assert_consistent();
}

#[test]
fn each_validation_refuses_with_its_own_error_and_changes_nothing() {
    let mut l = setup();
    l.bind(
        id(1),
        &bind_req("f", 5, 0x10_0000, 0, MIB),
        &mut never_alive,
    )
    .unwrap();
    let before = snapshot(&l);
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
        (bind_req("nope", 6, 0, 0, 4096), |e| {
            matches!(e, LedgerError::UnknownFile { .. })
        }),
    ];
    let mut errnos = Vec::new();
    for (req, check) in cases {
        let err = l.bind(id(1), &req, &mut never_alive).unwrap_err();
        assert!(check(&err), "{req:?} gave {err:?}");
        assert_eq!(snapshot(&l), before, "{req:?} changed the ledger");
        errnos.push(err.errno());
    }
    // The main classes are told apart by errno too.
    assert!(errnos.contains(&Errno::INVAL) && errnos.contains(&Errno::RANGE));
    assert!(errnos.contains(&Errno::EXIST) && errnos.contains(&Errno::ADDRINUSE));
    l.assert_consistent();
}

#[test]
fn adjacent_ranges_are_not_overlaps() {
    let mut l = setup();
    l.bind(id(1), &bind_req("f", 0, 0, MIB, MIB), &mut never_alive)
        .unwrap();
    l.bind(id(1), &bind_req("f", 1, MIB, 0, MIB), &mut never_alive)
        .unwrap();
    l.bind(
        id(1),
        &bind_req("f", 2, 2 * MIB, 2 * MIB, 2 * MIB),
        &mut never_alive,
    )
    .unwrap();
    l.assert_consistent();
}

#[test]
fn same_slot_and_gpa_are_per_vm() {
    let mut l = setup();
    l.add_file(name("g"), memfd_spec(MIB), None).unwrap();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.bind(id(2), &bind_req("g", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.assert_consistent();
}

#[test]
fn closing_a_lease_drops_all_bindings_and_clears_owners() {
    let mut l = setup();
    l.add_file(name("g"), memfd_spec(MIB), Some(vm("a")))
        .unwrap();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.bind(id(1), &bind_req("f", 1, MIB, MIB, MIB), &mut never_alive)
        .unwrap();
    l.bind(id(1), &bind_req("g", 2, 4 * MIB, 0, MIB), &mut never_alive)
        .unwrap();
    assert_eq!(l.files_created_by(vm("a").uuid), 1);
    let end = l.close_lease(id(1)).unwrap();
    assert_eq!(end.bindings.len(), 3);
    assert_eq!(end.released, vec![name("f"), name("g")]);
    assert!(l
        .files()
        .all(|(_, f)| f.owner.is_none() && f.binding_count() == 0));
    // Files belong to the VM that made them, not to its lease.
    assert_eq!(l.files_created_by(vm("a").uuid), 1);
    // The files stay.
    assert_eq!(l.files().count(), 2);
    assert!(l
        .bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap());
    assert_eq!(l.close_lease(id(1)), Err(LedgerError::UnknownLease(id(1))));
    l.assert_consistent();
}

#[test]
fn one_lease_per_vm() {
    let mut l = setup();
    let err = l
        .open_lease(id(3), vm("a"), Peer { pid: 7, uid: 0 })
        .unwrap_err();
    assert!(matches!(err, LedgerError::VmBusy { lease, .. } if lease == id(1)));
    l.close_lease(id(1)).unwrap();
    l.open_lease(id(3), vm("a"), Peer::default()).unwrap();
    assert_eq!(l.lease_of(&VmSelector::Name(name("a"))), Ok(id(3)));
    assert_eq!(l.lease_of(&VmSelector::Uuid(vm("b").uuid)), Ok(id(2)));
    // Same name, other UUID: the name alone is ambiguous.
    let twin = VmId {
        uuid: Uuid([7; 16]),
        name: name("a"),
    };
    l.open_lease(id(4), twin, Peer::default()).unwrap();
    assert!(matches!(
        l.lease_of(&VmSelector::Name(name("a"))),
        Err(LedgerError::AmbiguousVm { count: 2, .. })
    ));
    assert!(matches!(
        l.lease_of(&VmSelector::Name(name("zz"))),
        Err(LedgerError::UnknownVm(_))
    ));
}

#[test]
fn live_holder_of_another_vm_blocks_bind_until_gone_or_cleared() {
    let mut l = setup();
    l.add_holder(&name("f"), 4242, vm("a").uuid, None).unwrap();
    // The holder's own VM is not blocked.
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut |_| true)
        .unwrap();
    l.unbind(id(1), 0).unwrap();
    let before = snapshot(&l);
    let err = l
        .bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut |pid| pid == 4242)
        .unwrap_err();
    assert!(matches!(err, LedgerError::HeldElsewhere { pid: 4242, .. }));
    assert!(err.to_string().contains("pid 4242"));
    assert_eq!(snapshot(&l), before);
    // Gone: allowed.
    l.bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.unbind(id(2), 0).unwrap();
    // Cleared by a scrub: allowed even while alive.
    l.clear_holders(&name("f")).unwrap();
    l.bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut |_| true)
        .unwrap();
    l.assert_consistent();
}

#[test]
fn bindings_per_file_are_bounded() {
    let mut l = Ledger::new();
    l.add_file(name("f"), memfd_spec(1 << 30), None).unwrap();
    l.open_lease(id(1), vm("a"), Peer::default()).unwrap();
    for i in 0..MAX_BINDINGS_PER_FILE as u64 {
        let slot = u32::try_from(i).unwrap();
        l.bind(
            id(1),
            &bind_req("f", slot, i * 4096, i * 4096, 4096),
            &mut never_alive,
        )
        .unwrap();
    }
    let err = l
        .bind(
            id(1),
            &bind_req("f", 999, 1 << 40, 1 << 29, 4096),
            &mut never_alive,
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::TooManyBindings { .. }));
    l.assert_consistent();
}

#[test]
fn a_holder_counts_while_its_process_or_its_lease_lives() {
    let mut l = setup();
    l.open_lease(id(3), vm("c"), Peer { pid: 77, uid: 0 })
        .unwrap();
    // pid 4242 got the fd through lease 1 (vm a), then handed the lease
    // socket on (a launcher starting QEMU) and exited.
    l.add_holder(&name("f"), 4242, vm("a").uuid, Some(id(1)))
        .unwrap();
    let err = l
        .bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::HeldElsewhere { pid: 4242, holder, .. } if holder.contains("lease 1")),
        "{err}"
    );
    // The requesting process itself is not shielded from.
    assert!(l
        .check_access(&name("f"), vm("c").uuid, 4242, &mut |_| true)
        .is_ok());
    l.prune_holders(&mut never_alive);
    assert_eq!(
        l.file(&name("f")).unwrap().holders().count(),
        1,
        "lease 1 is open"
    );
    l.close_lease(id(1)).unwrap();
    l.bind(id(2), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.prune_holders(&mut never_alive);
    assert_eq!(l.file(&name("f")).unwrap().holders().count(), 0);
    l.assert_consistent();
}

#[test]
fn removal_rules() {
    let mut l = setup();
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    assert!(matches!(
        l.remove_file(&name("f"), false),
        Err(LedgerError::FileBound { bindings: 1, .. })
    ));
    let dropped = l.remove_file(&name("f"), true).unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(l.lease(id(1)).unwrap().bindings().count(), 0);
    assert!(matches!(
        l.remove_file(&name("f"), true),
        Err(LedgerError::UnknownFile { .. })
    ));
    l.assert_consistent();
}

#[test]
// Small test values: every cast below is of a number under 64.
#[allow(clippy::cast_possible_truncation)]
fn pseudo_random_operations_keep_invariants() {
    // A deterministic xorshift walk over binds, unbinds and lease churn.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut l = Ledger::new();
    for f in 0..4 {
        l.add_file(name(&format!("f{f}")), memfd_spec(16 * 4096), None)
            .unwrap();
    }
    let mut open = Vec::new();
    let mut next_id = LeaseId::FIRST;
    for _ in 0..20_000 {
        match next() % 8 {
            0 if open.len() < 4 => {
                let v = vm(&format!("v{}", next() % 6));
                if l.open_lease(next_id, v, Peer::default()).is_ok() {
                    open.push(next_id);
                }
                next_id = next_id.next();
            }
            1 if !open.is_empty() => {
                let id = open.remove((next() % open.len() as u64) as usize);
                l.close_lease(id).unwrap();
            }
            2..=5 if !open.is_empty() => {
                let id = open[(next() % open.len() as u64) as usize];
                let req = bind_req(
                    &format!("f{}", next() % 4),
                    (next() % 8) as u32,
                    (next() % 32) * 4096,
                    (next() % 18) * 4096,
                    (next() % 6) * 4096,
                );
                let before = snapshot(&l);
                if l.bind(id, &req, &mut never_alive).is_err() {
                    assert_eq!(before, snapshot(&l));
                }
            }
            _ if !open.is_empty() => {
                let id = open[(next() % open.len() as u64) as usize];
                let _ = l.unbind(id, (next() % 8) as u32);
            }
            _ => {}
        }
        l.assert_consistent();
    }
}

#[test]
fn a_holder_record_never_moves_from_one_vm_to_another() {
    let mut l = setup();
    l.open_lease(id(3), vm("c"), Peer { pid: 77, uid: 0 })
        .unwrap();
    // pid 4242 received f for vm a through lease 1, then for vm b through
    // lease 2 (the requester exemption lets a process that has the fd ask
    // again for another VM).
    l.add_holder(&name("f"), 4242, vm("a").uuid, Some(id(1)))
        .unwrap();
    l.add_holder(&name("f"), 4242, vm("b").uuid, Some(id(2)))
        .unwrap();
    let holders: Vec<_> = l.file(&name("f")).unwrap().holders().collect();
    assert_eq!(holders.len(), 2, "{holders:?}");
    // pid 4242 exits and lease 2 ends; lease 1 lives on in whoever it was
    // handed to, and so does vm a's claim: vm c is still kept out.
    l.close_lease(id(2)).unwrap();
    l.prune_holders(&mut never_alive);
    let err = l
        .bind(id(3), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::HeldElsewhere { pid: 4242, holder, .. } if holder.contains("VM a")),
        "{err}"
    );
    // vm a itself is not blocked by its own holder.
    l.bind(id(1), &bind_req("f", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.assert_consistent();
}

#[test]
fn a_guest_memfd_binds_only_into_the_vm_that_deposited_it() {
    let mut l = setup();
    let gmem = FileSpec {
        size: 4 * MIB,
        kind: MemoryKind::GuestMemfd,
        page_size: 4096,
    };
    l.add_file(name("g"), gmem, Some(vm("a"))).unwrap();
    let before = snapshot(&l);
    let err = l
        .bind(id(2), &bind_req("g", 0, 0, 0, MIB), &mut never_alive)
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::ForeignGuestMemfd { depositor, .. } if depositor.name.as_str() == "a"),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::PERM);
    assert_eq!(snapshot(&l), before);
    l.bind(id(1), &bind_req("g", 0, 0, 0, MIB), &mut never_alive)
        .unwrap();
    l.assert_consistent();
}
