//! Traffic and checks for the tests of gmemd surviving its own crash:
//! clients that create, bind and unbind while gmemd is killed, and an
//! invariant check over `gmemctl status --json`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gmem_protocol::wire::{BindRequest, GuestAddress, LeaseId, MemoryKind};
use gmem_protocol::Client;
use serde_json::Value;

use crate::{name, vm};

/// Size of each client's file.
pub const FILE_SIZE: u64 = 1 << 20;

/// What a client thread ends with.
#[derive(Debug)]
pub struct ClientEnd {
    /// Its VM's name.
    pub vm: String,
    /// Its lease, as HELLO gave it.
    pub lease: LeaseId,
    /// Its own fd of its file.
    pub fd: OwnedFd,
    /// Rounds done.
    pub rounds: u64,
    /// Restart notices it saw.
    pub restarts_seen: u64,
    /// The connection, still open.
    pub client: Client,
}

/// Stops the traffic of [`start_clients`] for a moment, so a status read
/// in pages sees one state.
#[derive(Debug, Default)]
pub struct Pause {
    wanted: AtomicBool,
    paused: AtomicUsize,
    /// What failed clients said: they never pause again.
    failures: Mutex<Vec<String>>,
}

impl Pause {
    /// Runs `f` while every one of the `n` clients waits between two
    /// requests (bounded: 30 s for them to get there).
    ///
    /// # Panics
    /// If they do not, or a client failed (saying what it failed with).
    pub fn during<T>(&self, n: usize, f: impl FnOnce() -> T) -> T {
        self.wanted.store(true, Ordering::SeqCst);
        crate::wait_until(Duration::from_secs(30), "the clients to pause", || {
            let failures = self.failures.lock().expect("failures");
            assert!(failures.is_empty(), "client(s) failed: {failures:?}");
            (self.paused.load(Ordering::SeqCst) >= n).then_some(())
        });
        let out = f();
        self.wanted.store(false, Ordering::SeqCst);
        out
    }

    fn point(&self, stop: &AtomicBool) {
        if !self.wanted.load(Ordering::SeqCst) {
            return;
        }
        self.paused.fetch_add(1, Ordering::SeqCst);
        while self.wanted.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.paused.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `n` clients on `socket`, each VM `load-I` with a file `ram` holding
/// [`pattern`]`(I)`, binding and unbinding it (and making and destroying a
/// scratch file) until `stop` is set, holding still while `pause` asks.
/// Each returns what it ends with, or the first error.
pub fn start_clients(
    socket: PathBuf,
    n: usize,
    stop: Arc<AtomicBool>,
    pause: Arc<Pause>,
) -> (Arc<Barrier>, Vec<JoinHandle<Result<ClientEnd, String>>>) {
    let ready = Arc::new(Barrier::new(n + 1));
    let handles = (0..n)
        .map(|i| {
            let (socket, stop, ready) = (socket.clone(), Arc::clone(&stop), Arc::clone(&ready));
            let pause = Arc::clone(&pause);
            std::thread::spawn(move || {
                let result = client_loop(&socket, i, &stop, &ready, &pause);
                if let Err(e) = &result {
                    // Keep the others from waiting for this one.
                    stop.store(true, Ordering::Relaxed);
                    pause.failures.lock().expect("failures").push(e.clone());
                }
                result
            })
        })
        .collect();
    (ready, handles)
}

/// The bytes client `i` writes at the start and the end of its file.
pub fn pattern(i: usize) -> Vec<u8> {
    format!("pattern-of-load-{i}-").repeat(4).into_bytes()
}

fn client_loop(
    socket: &std::path::Path,
    i: usize,
    stop: &AtomicBool,
    ready: &Barrier,
    pause: &Pause,
) -> Result<ClientEnd, String> {
    let vm_name = format!("load-{i}");
    let setup = || -> Result<(Client, OwnedFd), String> {
        let mut c = Client::connect(socket, vm(&vm_name)).map_err(|e| e.to_string())?;
        c.set_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let (fd, _) = c
            .create(&name("ram"), FILE_SIZE, MemoryKind::Memfd)
            .map_err(|e| e.to_string())?;
        let p = pattern(i);
        rustix::io::pwrite(&fd, &p, 0).map_err(|e| e.to_string())?;
        rustix::io::pwrite(&fd, &p, FILE_SIZE - p.len() as u64).map_err(|e| e.to_string())?;
        Ok((c, fd))
    };
    let made = setup();
    ready.wait();
    let (mut c, fd) = made?;
    let lease = c.lease().ok_or("no lease")?;
    let bind = BindRequest::new(0, GuestAddress(0), name("ram"), 0, FILE_SIZE);
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        pause.point(stop);
        let step = |what: &str, r: Result<(), gmem_protocol::ClientError>| {
            r.map_err(|e| format!("{vm_name} round {rounds}: {what}: {e}"))
        };
        step("bind", c.bind(&bind))?;
        step("unbind", c.unbind(0))?;
        if rounds % 8 == 0 {
            let scratch = name("scratch");
            step(
                "create scratch",
                c.create(&scratch, 4096, MemoryKind::Memfd).map(drop),
            )?;
            step("destroy scratch", c.destroy(&scratch))?;
        }
        rounds += 1;
    }
    // End bound, so the check sees owners and bindings too.
    c.bind(&bind)
        .map_err(|e| format!("{vm_name}: final bind: {e}"))?;
    Ok(ClientEnd {
        vm: vm_name,
        lease,
        fd,
        rounds,
        restarts_seen: c.restarts_seen(),
        client: c,
    })
}

/// Checks what `gmemctl status --json` shows against the ledger's
/// invariants: names unique per namespace, one owner per file and it holds
/// the file's bindings, bindings of a file never overlap, slots and guest
/// ranges of a lease never overlap, every owner's lease is listed, a
/// lease's binding count matches. Read it with no traffic (see [`Pause`]):
/// a status is read a page at a time.
///
/// # Panics
/// On any violation, saying which.
pub fn check_invariants(status: &Value) {
    let leases: BTreeMap<u64, &Value> = status["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| (l["id"].as_u64().expect("lease id"), l))
        .collect();
    let mut names = BTreeSet::new();
    let mut slots: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for f in status["files"].as_array().expect("files") {
        let space = f["vm"]["uuid"].as_str().unwrap_or("-").to_owned();
        let file = f["name"].as_str().expect("name").to_owned();
        assert!(
            names.insert((space.clone(), file.clone())),
            "{space}/{file} listed twice"
        );
        let bindings = f["bindings"].as_array().expect("bindings");
        match f["owner"].as_object() {
            None => assert!(
                bindings.is_empty(),
                "{space}/{file}: bindings without an owner"
            ),
            Some(owner) => {
                let lease = owner["lease"].as_u64().expect("owner lease");
                assert!(
                    leases.contains_key(&lease),
                    "{space}/{file}: owner lease {lease} not listed"
                );
                assert!(
                    !bindings.is_empty(),
                    "{space}/{file}: an owner without bindings"
                );
                let mut ranges: Vec<(u64, u64)> = bindings
                    .iter()
                    .map(|b| (b["offset"].as_u64().unwrap(), b["size"].as_u64().unwrap()))
                    .collect();
                ranges.sort_unstable();
                for w in ranges.windows(2) {
                    assert!(
                        w[0].0 + w[0].1 <= w[1].0,
                        "{space}/{file}: overlapping bindings"
                    );
                }
                for b in bindings {
                    slots.entry(lease).or_default().push((
                        b["slot"].as_u64().unwrap(),
                        b["gpa"].as_u64().unwrap(),
                        b["size"].as_u64().unwrap(),
                    ));
                }
            }
        }
    }
    for (lease, mut bs) in slots {
        bs.sort_unstable();
        for w in bs.windows(2) {
            assert_ne!(w[0].0, w[1].0, "lease {lease}: slot {} bound twice", w[0].0);
        }
        bs.sort_by_key(|b| b.1);
        for w in bs.windows(2) {
            assert!(
                w[0].1 + w[0].2 <= w[1].1,
                "lease {lease}: guest ranges overlap"
            );
        }
        let listed = leases[&lease]["bindings"].as_u64().unwrap_or(0);
        assert_eq!(listed, bs.len() as u64, "lease {lease}: binding count");
    }
}

/// Checks that each client kept what it had: its lease is the one HELLO
/// gave it, still open with its one binding, and its file is there with
/// its pattern, in the very inode the client holds. `status` is
/// `gmemctl status --json`; `ctl` an operator's control session.
///
/// # Panics
/// On the first thing lost.
pub fn check_clients_kept(status: &Value, ctl: &mut Client, ends: &[ClientEnd]) {
    let leases = status["leases"].as_array().expect("leases");
    for (i, end) in ends.iter().enumerate() {
        let lease = leases
            .iter()
            .find(|l| l["name"] == end.vm.as_str())
            .unwrap_or_else(|| panic!("{}'s lease is gone: {status}", end.vm));
        assert_eq!(lease["id"], end.lease.get(), "{}: the same lease", end.vm);
        assert_eq!(lease["bindings"], 1, "{}", end.vm);
        let (fd, _) = ctl.open_in(&crate::vm_file(&end.vm, "ram")).unwrap();
        let p = pattern(i);
        let mut buf = vec![0u8; p.len()];
        for at in [0, FILE_SIZE - p.len() as u64] {
            rustix::io::pread(&fd, &mut buf, at).unwrap();
            assert_eq!(buf, p, "{}: content at {at}", end.vm);
        }
        let ino = |f: &OwnedFd| rustix::fs::fstat(f).unwrap().st_ino;
        assert_eq!(ino(&fd), ino(&end.fd), "{}: the same file", end.vm);
    }
}
