//! 200 concurrent VMM clients creating, binding and unbinding in a loop:
//! every reply is correct, an operators' file is never reachable by any of
//! them, and the ledger ends with no bindings. Prints the request rate (not asserted:
//! speed targets live in benchmarks).

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, MemoryKind};
use gmem_tests::{name, vm, Daemon};
use rustix::io::Errno;

const CLIENTS: usize = 200;
const ROUNDS: usize = 25;

#[test]
fn two_hundred_clients_bind_and_unbind_concurrently() {
    let daemon = Daemon::start();
    daemon
        .control()
        .create(&name("shared"), 1 << 20, MemoryKind::Memfd)
        .unwrap();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let shared_holders = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let socket = daemon.socket();
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let holders = Arc::clone(&shared_holders);
            let requests = Arc::clone(&requests);
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client =
                    gmem_protocol::Client::connect(&socket, vm(&format!("vm-{i}"))).expect("lease");
                client
                    .set_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                barrier.wait();
                let own = name(&format!("ram-{i}"));
                let (_fd, info) = client.create(&own, 1 << 20, MemoryKind::Memfd).unwrap();
                assert_eq!(info.size, 1 << 20);
                let mut count = 2;
                let mut shared_wins = 0;
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
                        Ok(()) => {
                            holders.fetch_add(1, Ordering::SeqCst);
                            shared_wins += 1;
                        }
                        Err(err) => {
                            assert_eq!(err.errno(), Some(Errno::NOENT.raw_os_error()), "{err}");
                            let text = err.message().unwrap();
                            assert!(text.contains(&format!("vm-{i}/shared")), "{text}");
                        }
                    }
                }
                requests.fetch_add(count, Ordering::Relaxed);
                shared_wins
            })
        })
        .collect();
    let wins: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = start.elapsed();
    let total = requests.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("{CLIENTS} clients, {total} requests in {elapsed:.2?}: {rate:.0} requests/s");
    assert_eq!(wins, 0, "a VM bound the operators' file");
    assert_eq!(shared_holders.load(Ordering::SeqCst), 0);

    let files = daemon.control().files().unwrap();
    assert_eq!(files.len(), CLIENTS + 1);
    assert!(files
        .iter()
        .all(|f| f.bindings.is_empty() && f.owner.is_none()));
    assert!(daemon.control().leases().unwrap().is_empty());
}
