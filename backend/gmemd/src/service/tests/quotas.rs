//! Quotas, retired memory and orphans.

use super::*;

#[test]
fn the_file_quota_is_per_principal_across_its_vms() {
    let mut svc = service_with(|c| c.quotas.files = 3);
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut a2 = vm_session(&mut svc, 2, "a2", ALICE);
    let mut b = vm_session(&mut svc, 3, "b", BOB);
    call(&mut svc, &mut a, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut a, create_named("f2", 4096)).unwrap();
    call(&mut svc, &mut a2, create_named("f1", 4096)).unwrap();
    let (errno, text) = refused(call(&mut svc, &mut a2, create_named("f2", 4096)));
    assert_eq!(errno, Errno::DQUOT);
    assert!(
        text.contains("file quota") && text.contains("uid 1000"),
        "{text}"
    );
    // Bob's quota is his own.
    call(&mut svc, &mut b, create_named("f1", 4096)).unwrap();
    // A file destroyed (and held by no one) makes room.
    call(&mut svc, &mut a, destroy("f1")).unwrap();
    call(&mut svc, &mut a2, create_named("f2", 4096)).unwrap();
}

#[test]
fn destroyed_memory_counts_against_the_quota_while_a_holder_may_reach_it() {
    let mut svc = service_with(|c| c.quotas.memory = 8 * MIB);
    // The process gmemd hands the file to: alive until dropped below.
    let holder = Process::spawn();
    let mut a = session_of(&svc, 1, ALICE, holder.pid());
    call(&mut svc, &mut a, hello(Some("a"))).unwrap();
    call(&mut svc, &mut a, create(6 * MIB)).unwrap();
    call(&mut svc, &mut a, destroy("f")).unwrap();
    assert_eq!(svc.ledger().retired_bytes(), 6 * MIB);
    let (errno, text) = refused(call(&mut svc, &mut a, create_named("g", 4 * MIB)));
    assert_eq!(errno, Errno::DQUOT, "{text}");
    assert!(text.contains("memory quota"), "{text}");
    // Another principal pays nothing for it.
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    call(&mut svc, &mut b, create(4 * MIB)).unwrap();
    // A new lease of the same principal starts where the last one left.
    svc.close_session(&a, "test");
    svc.upkeep();
    for (id, v) in [(3, "a"), (4, "a2")] {
        let mut again = vm_session(&mut svc, id, v, ALICE);
        assert_eq!(
            errno_of(call(&mut svc, &mut again, create_named("g", 4 * MIB))),
            Errno::DQUOT,
            "{v}"
        );
        svc.close_session(&again, "test");
    }
    // Once the holder has exited (its lease ended already), it is free.
    drop(holder);
    svc.upkeep();
    assert_eq!(svc.ledger().retired_bytes(), 0);
    let mut again = vm_session(&mut svc, 5, "a", ALICE);
    call(&mut svc, &mut again, create_named("g", 4 * MIB)).unwrap();
}

#[test]
fn destroyed_memory_of_a_process_gmemd_cannot_see_counts_while_its_lease_is_open() {
    let mut svc = service_with(|c| c.quotas.memory = 8 * MIB);
    // pid 0: a process in a pid namespace gmemd cannot see into.
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    call(&mut svc, &mut a, create(6 * MIB)).unwrap();
    call(&mut svc, &mut a, destroy("f")).unwrap();
    svc.upkeep();
    assert_eq!(
        errno_of(call(&mut svc, &mut a, create_named("g", 4 * MIB))),
        Errno::DQUOT
    );
    svc.close_session(&a, "test");
    assert_eq!(svc.ledger().retired_bytes(), 0);
    let mut again = vm_session(&mut svc, 2, "a", ALICE);
    call(&mut svc, &mut again, create_named("g", 4 * MIB)).unwrap();
}

#[test]
fn max_files_is_global_and_counts_operators_files() {
    let mut svc = service_with(|c| c.limits.max_files = 3);
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    call(&mut svc, &mut a, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut b, create_named("f1", 4096)).unwrap();
    call(&mut svc, &mut root, create_named("pool", 4096)).unwrap();
    for s in [&mut a, &mut b, &mut root] {
        let (errno, text) = refused(call(&mut svc, s, create_named("f2", 4096)));
        assert_eq!(errno, Errno::NFILE, "{text}");
        assert!(text.contains("--max-files"), "{text}");
    }
}

#[test]
fn orphans_expire_after_the_configured_time_without_a_lease() {
    let mut svc = service_with(|c| c.limits.expire_orphans = Some(Duration::from_secs(60)));
    let mut a = vm_session(&mut svc, 1, "a", ALICE);
    let mut b = vm_session(&mut svc, 2, "b", BOB);
    let mut root = control(&mut svc, 3, ROOT);
    let fd = call_fd(&mut svc, &mut a, create(MIB));
    write_at(&fd, 0, b"alice's data");
    call(&mut svc, &mut b, create(MIB)).unwrap();
    call(&mut svc, &mut root, create_named("pool", MIB)).unwrap();
    svc.close_session(&a, "test");
    svc.upkeep();
    svc.advance_clock(30);
    svc.upkeep();
    assert_eq!(svc.ledger().vm(vm("a").uuid).unwrap().files, 1);
    assert_eq!(read_at(&fd, 0, 12), b"alice's data");
    svc.advance_clock(40);
    svc.upkeep();
    assert!(svc.ledger().vm(vm("a").uuid).is_none());
    assert_eq!(read_at(&fd, 0, 12), [0; 12]);
    // A VM with a lease, and operators' files, are no orphans.
    assert_eq!(svc.ledger().file_count(), 2);
    // The name is free again.
    vm_session(&mut svc, 4, "a", BOB);
}
