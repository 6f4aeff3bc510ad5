//! Request throughput of a real gmemd (release build), against baselines
//! measured in the same run that answer exactly the same frames (a 108-byte
//! BIND, a 20-byte UNBIND, a 20-byte reply each) and do nothing else:
//!
//! - a single-threaded epoll echo server, like for like with gmemd's event
//!   loop (one thread, readiness, non-blocking sockets): the cost of the
//!   transport and the loop;
//! - a thread-per-client echo: what both cores allow.
//!
//! Each echo server runs in a process of its own, as gmemd does: the
//! clients' switches to it then change address space as they do to gmemd.
//!
//! `cargo bench -p gmem-tests --bench requests`

#[path = "requests/echo.rs"]
mod echo;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, MemoryKind};
use gmem_tests::{median, name, vm, Daemon};

const ROUNDS_PER_CLIENT: usize = 2_000;

fn main() {
    echo::serve_if_asked();
    // The daemon as shipped: info level, which logs every bind and unbind,
    // its state directory on tmpfs like its default /run/gmemd (the
    // journal is written before each reply).
    if std::env::var_os("GMEMD_TEST_LOG").is_none() {
        std::env::set_var("GMEMD_TEST_LOG", "info");
    }
    if std::path::Path::new("/dev/shm").is_dir() && std::env::var_os("TMPDIR").is_none() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    let daemon = Daemon::start_with(&["--max-files-per-lease", "4"]);
    let epoll_echo = echo::EchoServer::start(echo::EchoKind::Epoll);
    let threaded_echo = echo::EchoServer::start(echo::EchoKind::Threaded);
    println!(
        "| clients | epoll echo (baseline), req/s | thread-per-client echo, req/s | gmemd BIND+UNBIND, req/s | gmemd / epoll echo | gmemd / threaded echo |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    // Rounds interleave the three servers, so a busy moment of the machine
    // hits all of them; the medians are printed.
    let rounds_env = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok());
    let runs: usize = rounds_env.unwrap_or(5);
    for clients in [1, 8, 64, 200] {
        let rounds = (ROUNDS_PER_CLIENT * 8 / clients).max(50);
        let (mut epoll, mut threaded, mut bind) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            epoll.push(echo::rate(epoll_echo.path(), clients, rounds));
            threaded.push(echo::rate(threaded_echo.path(), clients, rounds));
            bind.push(gmemd_rate(&daemon, clients, rounds));
        }
        let (epoll, threaded, bind) = (median(epoll), median(threaded), median(bind));
        println!(
            "| {clients} | {epoll:.0} | {threaded:.0} | {bind:.0} | {:.2}x | {:.2}x |",
            bind / epoll,
            bind / threaded
        );
    }
    println!("\nmedians of {runs} interleaved runs (ROUNDS to change)");
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
pub(crate) fn timed(
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
