//! The journal and the fd keeper: what a gmemd restarted from them knows,
//! whole or damaged at every byte.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use super::*;
use crate::journal::record::Meta;
use crate::journal::Journal;
use crate::service::persist::{FdKeeper, Persistence};

/// An fd keeper in memory: what systemd's fd store would hold.
#[derive(Debug, Clone, Default)]
pub(super) struct MemKeeper(Arc<Mutex<HashMap<String, OwnedFd>>>);

impl FdKeeper for MemKeeper {
    fn keep(&mut self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let fd = fd.try_clone_to_owned()?;
        self.0.lock().unwrap().insert(name.to_owned(), fd);
        Ok(())
    }

    fn release(&mut self, name: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().remove(name);
        Ok(())
    }
}

impl MemKeeper {
    /// Copies of what it keeps, as a restarted gmemd gets them.
    pub(super) fn handed_over(&self) -> Vec<(String, OwnedFd)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(n, fd)| (n.clone(), fd.try_clone().unwrap()))
            .collect()
    }
}

fn persisted(dir: &std::path::Path, keeper: &MemKeeper) -> Service {
    persisted_with(dir, keeper, config())
}

/// A service of `config` journaling into `dir`, its fds kept by `keeper`.
pub(super) fn persisted_with(dir: &std::path::Path, keeper: &MemKeeper, config: Config) -> Service {
    let (journal, _) = Journal::open(dir).unwrap();
    let mut svc = Service::new(config);
    svc.persist_with(Persistence::new(
        journal,
        Some(Box::new(keeper.clone())),
        Meta::default(),
    ));
    svc
}

fn recover(dir: &std::path::Path, keeper: &MemKeeper) -> (Service, Vec<String>) {
    recover_with(dir, keeper, config())
}

/// The service a gmemd of `config` restarted from `dir` and `keeper` gets.
pub(super) fn recover_with(
    dir: &std::path::Path,
    keeper: &MemKeeper,
    config: Config,
) -> (Service, Vec<String>) {
    let (journal, recovered) = Journal::open(dir).unwrap();
    let r = Service::recover(
        config,
        journal,
        recovered,
        keeper.handed_over(),
        Some(Box::new(keeper.clone())),
        true,
    );
    (r.service, r.notes)
}

/// A history: alice's VM with a bound file and a destroyed one, an
/// operators' file, bob's VM. Returns what was written where.
fn history(svc: &mut Service) -> Vec<(FileKey, u64, Vec<u8>)> {
    let mut a = vm_session(svc, 1, "vm-a", ALICE);
    let ram = call_fd(svc, &mut a, create_named("ram", MIB));
    write_at(&ram, 4096, b"alice's ram");
    let gone = call_fd(svc, &mut a, create_named("gone", MIB));
    write_at(&gone, 0, b"gone");
    call(svc, &mut a, destroy("gone")).unwrap();
    call(
        svc,
        &mut a,
        RequestBody::Bind(BindRequest::new(0, GuestAddress(0), name("ram"), 0, MIB)),
    )
    .unwrap();
    let mut op = control(svc, 2, ROOT);
    let pool = call_fd(svc, &mut op, create_named("pool", MIB));
    write_at(&pool, 0, b"operators");
    let mut b = vm_session(svc, 3, "vm-b", BOB);
    let bob = call_fd(svc, &mut b, create_named("ram", MIB));
    write_at(&bob, 0, b"bob");
    vec![
        (
            FileKey::vm(vm("vm-a").uuid, name("ram")),
            4096,
            b"alice's ram".to_vec(),
        ),
        (FileKey::operators(name("pool")), 0, b"operators".to_vec()),
        (
            FileKey::vm(vm("vm-b").uuid, name("ram")),
            0,
            b"bob".to_vec(),
        ),
    ]
}

fn content(svc: &Service, key: &FileKey, at: u64, len: usize) -> Vec<u8> {
    let fd = svc.memfiles.get(key).expect("file kept");
    read_at(fd, at, len)
}

#[test]
fn a_restarted_service_knows_every_file_vm_lease_and_binding() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let mut svc = persisted(dir.path(), &keeper);
    let written = history(&mut svc);
    let before = snapshot(&svc);
    drop(svc);
    let (svc, notes) = recover(dir.path(), &keeper);
    // Sessions were never handed over (no sockets here): their leases wait
    // for the grace period; all the rest is as it was.
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(snapshot(&svc), before);
    for (key, at, text) in &written {
        assert_eq!(&content(&svc, key, *at, text.len()), text, "{key}");
    }
    assert_eq!(svc.history().restarts, 1);
    // Ties came back too: bob cannot take alice's VM.
    let mut svc = svc;
    let mut s = session(&svc, 9, BOB);
    assert_eq!(
        errno_of(call(&mut svc, &mut s, hello(Some("vm-a")))),
        Errno::ACCESS
    );
}

#[test]
fn a_journal_cut_at_any_byte_loses_only_what_came_after_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let mut svc = persisted(dir.path(), &keeper);
    history(&mut svc);
    drop(svc);
    let journal = std::fs::read(dir.path().join("ledger.journal")).unwrap();
    let snap = std::fs::read(dir.path().join("ledger.snap")).unwrap();
    for cut in 0..=journal.len() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ledger.snap"), &snap).unwrap();
        std::fs::write(d.path().join("ledger.journal"), &journal[..cut]).unwrap();
        let (j, recovered) = Journal::open(d.path()).unwrap();
        let described = recovered.state.clone();
        let torn = !recovered.damage.is_empty();
        let r = Service::recover(config(), j, recovered, keeper.handed_over(), None, true);
        // Every file the intact part describes, whose fd was kept, is back.
        for f in described.files.values() {
            if keeper
                .0
                .lock()
                .unwrap()
                .contains_key(&format!("f{}", f.fid))
            {
                assert!(
                    r.service.memfiles.by_fid(f.fid).is_some(),
                    "cut at {cut}: file {} lost",
                    f.name
                );
            }
        }
        if torn {
            assert!(!r.notes.is_empty(), "cut at {cut}: damage not reported");
        }
        // What the cut part described is not lost either: its memory is
        // kept, as recovered operators' files.
        for (name, _) in keeper.handed_over() {
            let fid: u64 = name[1..].parse().unwrap();
            assert!(
                r.service.memfiles.by_fid(fid).is_some(),
                "cut at {cut}: {name} dropped"
            );
        }
        r.service.ledger.assert_consistent();
    }
}

#[test]
fn a_flipped_byte_is_reported_and_the_rest_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let mut svc = persisted(dir.path(), &keeper);
    history(&mut svc);
    drop(svc);
    let journal = std::fs::read(dir.path().join("ledger.journal")).unwrap();
    let snap = std::fs::read(dir.path().join("ledger.snap")).unwrap();
    for at in (crate::journal::codec::HEADER_LEN..journal.len()).step_by(7) {
        let d = tempfile::tempdir().unwrap();
        let mut bad = journal.clone();
        bad[at] ^= 0x21;
        std::fs::write(d.path().join("ledger.snap"), &snap).unwrap();
        std::fs::write(d.path().join("ledger.journal"), &bad).unwrap();
        let (j, recovered) = Journal::open(d.path()).unwrap();
        assert!(!recovered.damage.is_empty(), "flip at {at} went unnoticed");
        let r = Service::recover(config(), j, recovered, keeper.handed_over(), None, true);
        assert!(!r.notes.is_empty(), "flip at {at}");
        r.service.ledger.assert_consistent();
    }
}

#[test]
fn fds_kept_and_released_follow_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let mut svc = persisted(dir.path(), &keeper);
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    call_fd(&mut svc, &mut a, create_named("ram", MIB));
    let fid = svc
        .memfiles
        .fid(&FileKey::vm(vm("vm-a").uuid, name("ram")))
        .unwrap();
    assert!(keeper.0.lock().unwrap().contains_key(&format!("f{fid}")));
    call(&mut svc, &mut a, destroy("ram")).unwrap();
    assert!(!keeper.0.lock().unwrap().contains_key(&format!("f{fid}")));
}

#[test]
fn a_lease_whose_connection_was_lost_ends_after_the_grace_and_its_vm_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = MemKeeper::default();
    let mut svc = persisted(dir.path(), &keeper);
    history(&mut svc);
    drop(svc);
    // No connection came back: the leases wait for the grace period.
    let (mut svc, _) = recover(dir.path(), &keeper);
    assert_eq!(svc.ledger.lease_count(), 2);
    svc.upkeep();
    assert_eq!(svc.ledger.lease_count(), 2, "ended before the grace");
    svc.advance_clock(config().limits.lease_grace.as_secs());
    svc.upkeep();
    assert_eq!(svc.ledger.lease_count(), 0);
    // Their bindings went; their files and ties stay.
    let ram = svc
        .ledger
        .file(&FileKey::vm(vm("vm-a").uuid, name("ram")))
        .unwrap();
    assert!(ram.owner.is_none());
    let mut s = session(&svc, 9, BOB);
    assert_eq!(
        errno_of(call(&mut svc, &mut s, hello(Some("vm-a")))),
        Errno::ACCESS
    );
}

/// A keeper that checks, each time it is told, what the journal on disk
/// says: an fd is kept only once its file's record is written, and let go
/// before the record of the file's end is.
#[derive(Debug, Clone)]
struct JournalCheckingKeeper {
    journal: std::path::PathBuf,
    kept: MemKeeper,
    wrong: Arc<Mutex<Vec<String>>>,
}

impl JournalCheckingKeeper {
    /// Whether the journal on disk has a record of file `name` (`f<id>`)
    /// made, or gone.
    fn written(&self, name: &str) -> (bool, bool) {
        let fid: u64 = name[1..].parse().unwrap();
        let bytes = std::fs::read(&self.journal).unwrap();
        let records = crate::journal::codec::scan(&bytes).records;
        let records = records
            .into_iter()
            .map(|r| crate::journal::Record::decode(&bytes[r]).unwrap());
        records.fold((false, false), |(made, gone), r| match r {
            crate::journal::Record::File(f) if f.fid == fid => (true, gone),
            crate::journal::Record::FileGone { fid: g } if g == fid => (made, true),
            _ => (made, gone),
        })
    }
}

impl FdKeeper for JournalCheckingKeeper {
    fn keep(&mut self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        if name.starts_with('f') && self.written(name) != (true, false) {
            self.wrong
                .lock()
                .unwrap()
                .push(format!("{name} kept before its record"));
        }
        self.kept.keep(name, fd)
    }

    fn release(&mut self, name: &str) -> std::io::Result<()> {
        if name.starts_with('f') && self.written(name).1 {
            self.wrong
                .lock()
                .unwrap()
                .push(format!("{name} let go after its end's record"));
        }
        self.kept.release(name)
    }
}

#[test]
fn the_keeper_never_holds_memory_the_written_journal_does_not_describe() {
    let dir = tempfile::tempdir().unwrap();
    let keeper = JournalCheckingKeeper {
        journal: dir.path().join("ledger.journal"),
        kept: MemKeeper::default(),
        wrong: Arc::default(),
    };
    let (journal, _) = Journal::open(dir.path()).unwrap();
    let mut svc = Service::new(config());
    svc.persist_with(Persistence::new(
        journal,
        Some(Box::new(keeper.clone())),
        Meta::default(),
    ));
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    call_fd(&mut svc, &mut a, create_named("ram", MIB));
    let fid = svc
        .memfiles
        .fid(&FileKey::vm(vm("vm-a").uuid, name("ram")))
        .unwrap();
    let kept = |fid: u64| {
        keeper
            .kept
            .0
            .lock()
            .unwrap()
            .contains_key(&format!("f{fid}"))
    };
    assert!(kept(fid));
    call(&mut svc, &mut a, destroy("ram")).unwrap();
    assert!(!kept(fid));
    let wrong = keeper.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "{wrong:?}");
}
