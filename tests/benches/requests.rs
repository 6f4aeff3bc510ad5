//! Request throughput of a real gmemd (release build), against a baseline
//! measured in the same run: a bare Unix-socket echo of the same frame sizes,
//! which is the cost of the transport alone.
//!
//! `cargo bench -p gmem-tests --bench requests`

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, MemoryKind, HEADER_SIZE};
use gmem_tests::{name, vm, Daemon};

const ROUNDS_PER_CLIENT: usize = 2_000;

fn main() {
    // The daemon as shipped: info level, which logs every bind and unbind.
    std::env::set_var("GMEMD_TEST_LOG", "info");
    let daemon = Daemon::start_with(&["--max-files-per-lease", "4"]);
    let echo = EchoServer::start();
    println!(
        "{:<34} {:>8} {:>12} {:>12}",
        "workload", "clients", "requests/s", "vs echo"
    );
    for clients in [1, 8, 64, 200] {
        let rounds = (ROUNDS_PER_CLIENT * 8 / clients).max(50);
        let base = echo_rate(&echo, clients, rounds);
        let bind = gmemd_rate(&daemon, clients, rounds);
        println!(
            "{:<34} {clients:>8} {base:>12.0} {:>12}",
            "echo of the same frames (baseline)", "1.00x"
        );
        println!(
            "{:<34} {clients:>8} {bind:>12.0} {:>11.2}x",
            "gmemd BIND+UNBIND",
            bind / base
        );
    }
}

/// Requests per second over `clients` leases, each binding and unbinding
/// its own file `rounds` times.
fn gmemd_rate(daemon: &Daemon, clients: usize, rounds: usize) -> f64 {
    let socket = daemon.socket();
    timed(clients, rounds * 2, |i, start| {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let vm_name = format!("bench-{clients}-{i}");
            let mut client = gmem_protocol::Client::connect(&socket, vm(&vm_name)).unwrap();
            let file = name(&format!("{vm_name}-ram"));
            client.create(&file, 1 << 20, MemoryKind::Memfd).unwrap();
            let bind = BindRequest::new(0, GuestAddress(0), file.clone(), 0, 1 << 20);
            start.wait();
            for _ in 0..rounds {
                client.bind(&bind).unwrap();
                client.unbind(0).unwrap();
            }
            client.destroy(&file).unwrap();
        })
    })
}

/// Starts `clients` threads with `spawn(index, start)`; each prepares, waits
/// on `start`, then makes `requests` requests. Returns requests per second
/// over the timed part.
fn timed(
    clients: usize,
    requests: usize,
    spawn: impl Fn(usize, Arc<Barrier>) -> std::thread::JoinHandle<()>,
) -> f64 {
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients).map(|i| spawn(i, Arc::clone(&start))).collect();
    start.wait();
    let began = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    rate(clients * requests, began.elapsed())
}

fn rate(requests: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let r = requests as f64 / elapsed.as_secs_f64();
    r
}

/// A thread-per-client echo server answering each 108-byte BIND-sized frame
/// with an 20-byte reply-sized frame.
struct EchoServer {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const REQUEST_LEN: usize = HEADER_SIZE + 96;
const REPLY_LEN: usize = HEADER_SIZE + 8;

impl EchoServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut req = [0u8; REQUEST_LEN];
                    while stream.read_exact(&mut req).is_ok() {
                        if stream.write_all(&[0u8; REPLY_LEN]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer { path, _dir: dir }
    }
}

fn echo_rate(echo: &EchoServer, clients: usize, rounds: usize) -> f64 {
    timed(clients, rounds * 2, |_, start| {
        let path = echo.path.clone();
        std::thread::spawn(move || {
            let mut stream = UnixStream::connect(path).unwrap();
            let mut reply = [0u8; REPLY_LEN];
            start.wait();
            for _ in 0..rounds * 2 {
                stream.write_all(&[1u8; REQUEST_LEN]).unwrap();
                stream.read_exact(&mut reply).unwrap();
            }
        })
    })
}
