//! Prefault and the warm pools: what CREATE takes from a pool, what the
//! pools may hold, and that they survive a restart.

use std::collections::HashSet;
use std::time::Instant;

use gmem_protocol::wire::{FillState, FillStatus, FillSubject};

use super::persist::{persisted_with, recover_with, MemKeeper};
use super::*;
use crate::pool::PoolSpec;

fn pool(size: u64, count: u32) -> PoolSpec {
    PoolSpec {
        size,
        kind: MemoryKind::Memfd,
        count,
    }
}

fn with_pools(pools: Vec<PoolSpec>) -> Config {
    let mut config = config();
    config.warm.pools = pools;
    config
}

/// Runs the service's timer work until `done` holds (or 20 s pass).
fn tend_until(svc: &mut Service, mut done: impl FnMut(&Service) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(svc) {
        assert!(Instant::now() < deadline, "the pools did not get there");
        svc.upkeep();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Ready files of each pool, as STATUS section 4 shows an operator.
fn pools_seen(svc: &mut Service) -> Vec<(u64, u32, u32)> {
    let mut op = control(svc, 99, ROOT);
    memory_seen(svc, &mut op)
        .into_iter()
        .filter_map(|m| match m.subject {
            FillSubject::Pool { ready, count, .. } => Some((m.size, ready, count)),
            FillSubject::File { .. } => None,
        })
        .collect()
}

fn memory_seen(svc: &mut Service, s: &mut Session) -> Vec<FillStatus> {
    let reply = status(svc, s, StatusSection::Memory).unwrap();
    FillStatus::decode_page(&reply.body).unwrap().entries
}

fn ready(svc: &Service) -> usize {
    svc.pool.files().count()
}

fn inode(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn resident(fd: &OwnedFd) -> u64 {
    u64::try_from(rustix::fs::fstat(fd).unwrap().st_blocks).unwrap() * 512
}

/// Whether gmemd made the fd's memfd for a pool (its label says).
fn from_pool(fd: &OwnedFd) -> bool {
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ))
    .unwrap();
    link.to_string_lossy().contains("gmemd:pool")
}

#[test]
fn create_takes_a_populated_zeroed_inode_nobody_held_and_the_pool_refills() {
    let mut svc = Service::new(with_pools(vec![pool(4 * MIB, 2)]));
    tend_until(&mut svc, |s| ready(s) == 2);
    assert_eq!(pools_seen(&mut svc), vec![(4 * MIB, 2, 2)]);
    // Every inode any client was ever given.
    let mut handed: HashSet<u64> = HashSet::new();
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    for round in 0..4 {
        let fd = call_fd(&mut svc, &mut a, create_named("ram", 4 * MIB));
        assert!(
            from_pool(&fd),
            "round {round}: CREATE did not take the pool's file"
        );
        assert!(
            handed.insert(inode(&fd)),
            "round {round}: a pool handed out an inode a client had held"
        );
        assert_eq!(resident(&fd), 4 * MIB, "a pool file is populated");
        assert!(read_at(&fd, 0, 4096).iter().all(|&b| b == 0));
        // The tenant writes, destroys; nothing of it may come back.
        write_at(&fd, 0, b"tenant data");
        call(&mut svc, &mut a, destroy("ram")).unwrap();
        tend_until(&mut svc, |s| ready(s) == 2);
    }
    // A size no pool keeps is made fresh, and the pool is left alone.
    let fd = call_fd(&mut svc, &mut a, create_named("odd", 2 * MIB));
    assert!(!from_pool(&fd));
    assert_eq!(ready(&svc), 2);
}

#[test]
fn pools_stay_within_max_memory_and_give_way_to_files() {
    let mut svc = Service::new(with_pools(vec![pool(8 * MIB, 4)]));
    svc.config.limits.max_total_memory = 20 * MIB;
    // 4 × 8 MiB do not fit in 20 MiB: two do.
    tend_until(&mut svc, |s| ready(s) == 2);
    for _ in 0..50 {
        svc.upkeep();
    }
    assert_eq!(ready(&svc), 2);
    assert!(svc.pool.file_count() == 2, "a third file is being filled");
    // 16 MiB in pools: a 12 MiB file fits only if the pools give way.
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let fd = call_fd(&mut svc, &mut a, create_named("big", 12 * MIB));
    assert!(!from_pool(&fd));
    assert_eq!(ready(&svc), 1, "exactly one pool file was let go");
    assert!(svc.memory_in_use() <= 20 * MIB);
    // And the pool does not grow back past the limit.
    for _ in 0..50 {
        svc.upkeep();
    }
    assert_eq!(svc.pool.file_count(), 1);
}

#[test]
fn pools_count_against_max_files() {
    let mut svc = Service::new(with_pools(vec![pool(MIB, 3)]));
    svc.config.limits.max_files = 2;
    tend_until(&mut svc, |s| ready(s) == 2);
    for _ in 0..50 {
        svc.upkeep();
    }
    assert_eq!(svc.pool.file_count(), 2);
}

#[test]
fn a_refused_create_leaves_the_pool_file_in_the_pool() {
    let mut svc = Service::new(with_pools(vec![pool(4 * MIB, 1)]));
    svc.config.quotas.memory = 6 * MIB;
    tend_until(&mut svc, |s| ready(s) == 1);
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    call_fd(&mut svc, &mut a, create_named("one", 2 * MIB));
    // 2 + 4 MiB is within the quota; the pool file is taken.
    call_fd(&mut svc, &mut a, create_named("two", 4 * MIB));
    tend_until(&mut svc, |s| ready(s) == 1);
    call(&mut svc, &mut a, destroy("one")).unwrap();
    let mut b = vm_session(&mut svc, 2, "vm-b", ALICE);
    // vm-b shares alice's quota: 4 + 4 MiB is over it.
    let (errno, text) = refused(call(&mut svc, &mut b, create_named("ram", 4 * MIB)));
    assert_eq!(errno, Errno::DQUOT, "{text}");
    assert_eq!(ready(&svc), 1, "the refused CREATE kept the pool's file");
}

#[test]
fn prefault_populates_in_the_background_and_status_shows_it() {
    let mut svc = service();
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let req = RequestBody::Create(CreateRequest {
        name: name("ram"),
        size: 16 * MIB,
        kind: MemoryKind::Memfd,
        flags: CreateFlags::PREFAULT,
    });
    let fd = call_fd(&mut svc, &mut a, req);
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let seen = memory_seen(&mut svc, &mut a);
        assert_eq!(seen.len(), 1, "{seen:?}");
        if seen[0].state != FillState::Prefaulting || Instant::now() > deadline {
            break seen[0].clone();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(entry.state, FillState::Populated);
    assert_eq!(entry.populated, 16 * MIB);
    assert_eq!(resident(&fd), 16 * MIB);
    // Another VM's lease does not see it; an operator does.
    let mut b = vm_session(&mut svc, 2, "vm-b", BOB);
    assert!(memory_seen(&mut svc, &mut b).is_empty());
    let mut op = control(&mut svc, 3, ROOT);
    assert_eq!(memory_seen(&mut svc, &mut op).len(), 1);
    // Gone with its file.
    call(&mut svc, &mut a, destroy("ram")).unwrap();
    assert!(memory_seen(&mut svc, &mut op).is_empty());
}

#[test]
fn prefault_and_section_4_need_the_feature() {
    let mut svc = service();
    let mut s = session(&svc, 1, ALICE);
    call(
        &mut svc,
        &mut s,
        hello_with(Features::all() - Features::PREFAULT, Some(vm("vm-a"))),
    )
    .unwrap();
    let req = RequestBody::Create(CreateRequest {
        name: name("ram"),
        size: MIB,
        kind: MemoryKind::Memfd,
        flags: CreateFlags::PREFAULT,
    });
    assert_eq!(errno_of(call(&mut svc, &mut s, req)), Errno::OPNOTSUPP);
    assert_eq!(
        errno_of(status(&mut svc, &mut s, StatusSection::Memory)),
        Errno::OPNOTSUPP
    );
    // Nothing was made.
    assert_eq!(files_seen(&mut svc, &mut s).0, 0);
}

#[test]
fn pools_survive_a_restart_and_are_let_go_when_no_longer_configured() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let config = with_pools(vec![pool(2 * MIB, 2)]);
    let mut svc = persisted_with(dir.path(), &keeper, config.clone());
    tend_until(&mut svc, |s| ready(s) == 2);
    let before: HashSet<u64> = svc.pool.files().map(|(f, _)| inode(&f.fd)).collect();
    // Let the last adoption reach the journal.
    svc.upkeep();
    drop(svc);

    let (mut svc, notes) = recover_with(dir.path(), &keeper, config.clone());
    assert!(notes.is_empty(), "{notes:?}");
    let after: HashSet<u64> = svc.pool.files().map(|(f, _)| inode(&f.fd)).collect();
    assert_eq!(after, before, "the same ready files came back");
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let fd = call_fd(&mut svc, &mut a, create_named("ram", 2 * MIB));
    assert!(before.contains(&inode(&fd)));
    tend_until(&mut svc, |s| ready(s) == 2);
    svc.close_session(&a, "test");
    svc.upkeep();
    drop(svc);

    // The taken one is the VM's file now; the pool still has two.
    let (mut svc, notes) = recover_with(dir.path(), &keeper, config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(ready(&svc), 2);
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let reopened = call_fd(&mut svc, &mut a, open("ram"));
    assert_eq!(inode(&reopened), inode(&fd));
    svc.close_session(&a, "test");
    svc.upkeep();
    drop(svc);

    // Without pools, the kept files are let go, and stay gone.
    let (mut svc, notes) = recover_with(dir.path(), &keeper, config_without_pools());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(ready(&svc), 0);
    svc.upkeep();
    let kept = keeper.handed_over().len();
    // The VM's file and nothing else is kept (connections are not here).
    assert_eq!(kept, 1, "pool files still kept: {kept}");
}

fn config_without_pools() -> Config {
    config()
}
