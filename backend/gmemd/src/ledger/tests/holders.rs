//! Holders and retired memory: what stays charged, and until when.

use super::*;

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
