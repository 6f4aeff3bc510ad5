//! 200 concurrent VMM clients creating, binding and unbinding in a loop:
//! every reply is correct, an operators' file is never reachable by any of
//! them, one contended VM's file never has two owners while they all race
//! to run that VM, and the ledger ends with no bindings. Prints the
//! request rate (not asserted: speed targets live in benchmarks).

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, MemoryKind};
use gmem_protocol::Client;
use gmem_tests::{name, vm, Daemon};
use rustix::io::Errno;

const CLIENTS: usize = 200;
const ROUNDS: usize = 25;
/// The VM every client also tries to run, and its file: one lease per VM,
/// so one client at a time may bind it.
const CONTENDED: &str = "contended";
const PAGE: u64 = 4096;
/// Turns at running the contended VM, at least, over the whole test.
const TURNS: usize = 40;

/// One try at running the contended VM and binding its file: `false` if
/// another client runs it now (`EBUSY`), `true` once this client has owned
/// the file and let it go; panics if another owner was let in meanwhile.
///
/// A client counts itself in `owners` from its BIND's success until just
/// before it lets go (UNBIND, or the end of its lease): the whole time it
/// believes it owns the file. No other client can get the lease, and so
/// bind the file, before it lets go: a count above one is two owners at
/// once. Meanwhile STATUS must agree: the owner is this very lease, and
/// the file's only binding is this client's (a stale owner or binding left
/// by an earlier lease is a second owner too).
fn run_contended(socket: &std::path::Path, i: usize, round: usize, owners: &AtomicUsize) -> bool {
    let mut lease = match Client::connect(socket, vm(CONTENDED)) {
        Ok(lease) => lease,
        Err(err) => {
            assert_eq!(err.errno(), Some(Errno::BUSY.raw_os_error()), "{err}");
            return false;
        }
    };
    lease
        .set_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // Each client binds a page of its own, so no range overlap could
    // refuse a second owner: only the lease (and the ledger) can.
    let offset = i as u64 * PAGE;
    let mine = BindRequest::new(0, GuestAddress(0), name("shared"), offset, PAGE);
    lease
        .bind(&mine)
        .expect("the contended VM's VMM binds its file");
    let before = owners.fetch_add(1, Ordering::SeqCst);
    assert_eq!(
        before, 0,
        "client {i} owns {CONTENDED}/shared while {before} other client(s) do"
    );
    // (Root is an operator: its lease sees the operators' "shared" too.)
    let files = lease.scoped_files().expect("STATUS through the lease");
    let shared = files
        .iter()
        .find(|f| {
            f.file.name.as_str() == "shared"
                && f.vm.as_ref().is_some_and(|v| v.name.as_str() == CONTENDED)
        })
        .map(|f| &f.file)
        .expect("the contended VM's file");
    let owner = shared.owner.as_ref().expect("a bound file has an owner");
    assert_eq!(owner.vm.name.as_str(), CONTENDED);
    assert_eq!(
        Some(owner.lease),
        lease.lease(),
        "client {i} bound {CONTENDED}/shared but STATUS names another owner: {shared:?}"
    );
    assert_eq!(
        shared
            .bindings
            .iter()
            .map(|b| (b.offset, b.size))
            .collect::<Vec<_>>(),
        [(offset, PAGE)],
        "client {i}: bindings of another owner are left on {CONTENDED}/shared"
    );
    owners.fetch_sub(1, Ordering::SeqCst);
    // Half the time the UNBIND frees the file, half the time the end of
    // the lease does.
    if round % 2 == 0 {
        lease.unbind(0).expect("unbinding its own slot");
    }
    drop(lease);
    true
}

#[test]
fn two_hundred_clients_bind_and_unbind_concurrently() {
    let daemon = Daemon::start();
    daemon
        .control()
        .create(&name("shared"), 1 << 20, MemoryKind::Memfd)
        .unwrap();
    {
        let mut first = daemon.lease(vm(CONTENDED));
        first
            .create(&name("shared"), CLIENTS as u64 * PAGE, MemoryKind::Memfd)
            .unwrap();
    }
    daemon.wait_no_leases();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let owners = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let socket = daemon.socket();
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let owners = Arc::clone(&owners);
            let turns = Arc::clone(&turns);
            let requests = Arc::clone(&requests);
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket, vm(&format!("vm-{i}"))).expect("lease");
                client
                    .set_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                barrier.wait();
                let own = name(&format!("ram-{i}"));
                let (_fd, info) = client.create(&own, 1 << 20, MemoryKind::Memfd).unwrap();
                assert_eq!(info.size, 1 << 20);
                let mut count = 2;
                let mut shared_wins = 0;
                let mut contended_wins = 0;
                for round in 0..ROUNDS {
                    let offset = (round as u64 % 16) * 65536;
                    let bind = BindRequest::new(0, GuestAddress(0), own.clone(), offset, 65536);
                    client.bind(&bind).expect("own file always binds");
                    // The same slot again, elsewhere in the file: always refused.
                    let again = BindRequest {
                        offset: (offset + 65536) % (1 << 20),
                        ..bind.clone()
                    };
                    let err = client.bind(&again).unwrap_err();
                    assert_eq!(err.errno(), Some(Errno::EXIST.raw_os_error()));
                    client.unbind(0).expect("own unbind");
                    count += 3;

                    // The operators' "shared" is no VM's: on a lease the
                    // name means the VM's own file, which does not exist.
                    let shared =
                        BindRequest::new(1, GuestAddress(1 << 30), name("shared"), 0, 1 << 20);
                    count += 1;
                    match client.bind(&shared) {
                        Ok(()) => shared_wins += 1,
                        Err(err) => {
                            assert_eq!(err.errno(), Some(Errno::NOENT.raw_os_error()), "{err}");
                            let text = err.message().unwrap();
                            assert!(text.contains(&format!("vm-{i}/shared")), "{text}");
                        }
                    }

                    count += 1;
                    if run_contended(&socket, i, round, &owners) {
                        turns.fetch_add(1, Ordering::SeqCst);
                        contended_wins += 1;
                        count += 2 + usize::from(round % 2 == 0);
                    }
                }
                // The contended VM changes hands at least TURNS times
                // (a few clients go on racing for it until it has).
                while i % 10 == 0 && turns.load(Ordering::SeqCst) < TURNS {
                    count += 1;
                    if run_contended(&socket, i, 0, &owners) {
                        turns.fetch_add(1, Ordering::SeqCst);
                        contended_wins += 1;
                        count += 3;
                    } else {
                        // Pacing only: the lease is another client's now.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
                requests.fetch_add(count, Ordering::Relaxed);
                (shared_wins, contended_wins)
            })
        })
        .collect();
    let (mut wins, mut contended) = (0, 0);
    for thread in threads {
        let (w, c) = thread.join().unwrap();
        wins += w;
        contended += c;
    }
    let elapsed = start.elapsed();
    let total = requests.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "{CLIENTS} clients, {total} requests in {elapsed:.2?}: {rate:.0} requests/s; \
         {contended} turns at running {CONTENDED}"
    );
    assert_eq!(wins, 0, "a VM bound the operators' file");
    assert!(
        contended >= TURNS,
        "the contended VM ran {contended} time(s)"
    );

    // The last clients' leases end as gmemd reads their hang-ups.
    daemon.wait_no_leases();
    let files = daemon.control().files().unwrap();
    assert_eq!(files.len(), CLIENTS + 2);
    assert!(
        files
            .iter()
            .all(|f| f.bindings.is_empty() && f.owner.is_none()),
        "{files:?}"
    );
}
