//! gmemd at scale and under abuse (issue 9), against baselines measured in
//! the same run:
//! - request rate and RSS with 10,000 files and 2,000 leases, beside the
//!   same daemon with 1 file;
//! - an operator's round trip (connect, HELLO, a files page and a leases
//!   page, as `gmemctl status` starts) on that daemon idle, while a client
//!   loops full STATUS listings, and while another uid floods it with
//!   connections.
//!
//! `cargo bench -p gmem-tests --bench tenants`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind};
use gmem_protocol::Client;
use gmem_tests::tenant::{spawn_tenant, NOBODY};
use gmem_tests::{name, vm, Daemon};

const LEASES: usize = 2_000;
const FILES_PER_LEASE: usize = 5;
const RATE_REQUESTS: usize = 20_000;

fn main() {
    std::env::set_var("GMEMD_TEST_LOG", "warn");
    let args = [
        "--max-connections",
        "2100",
        "--max-files",
        "10100",
        "--quota-files",
        "100000",
    ];
    let small = Daemon::start_with(&args);
    let _small_leases = populate(&small, 1, 1);
    let big = Daemon::start_with(&args);
    let held = populate(&big, LEASES, FILES_PER_LEASE);

    println!("{:<44} {:>12} {:>10}", "gmemd with", "requests/s", "RSS");
    for (label, daemon) in [
        ("1 file, 1 lease (baseline)", &small),
        ("10,000 files, 2,000 leases", &big),
    ] {
        let bind = bind_rate(daemon);
        println!(
            "{:<44} {bind:>12.0} {:>7} KiB",
            format!("{label}: BIND+UNBIND"),
            rss_kib(daemon.pid())
        );
        let status = status_rate(daemon);
        println!(
            "{:<44} {status:>12.0} {:>7} KiB",
            format!("{label}: STATUS files page"),
            rss_kib(daemon.pid())
        );
    }

    println!();
    println!(
        "{:<52} {:>9} {:>9} {:>9}",
        "operator round trip (10k files, 2k leases)", "median", "p99", "max"
    );
    print_trips(
        "idle (baseline)",
        &round_trips(&big, Duration::from_secs(2)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let stop = Arc::clone(&stop);
        let socket = big.socket();
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket, vm("status-looper")).unwrap();
            let mut listings = 0;
            while !stop.load(Ordering::Relaxed) {
                c.files().unwrap();
                c.leases().unwrap();
                listings += 1;
            }
            listings
        })
    };
    let trips = round_trips(&big, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let listings = looper.join().unwrap();
    print_trips(
        &format!("under a STATUS loop ({listings} full listings)"),
        &trips,
    );
    let mut flood = spawn_tenant(&big, Some(NOBODY), &["--no-hello", "flood:15000", "hold"]);
    let trips = round_trips(&big, Duration::from_secs(3));
    let out = flood.wait_for_output("HOLDING", Duration::from_secs(120));
    let flooded = out
        .lines()
        .find_map(|l| l.strip_prefix("flood:15000 => OK "))
        .unwrap_or("?")
        .to_owned();
    print_trips(
        &format!("under a connection flood ({flooded} connects)"),
        &trips,
    );
    drop(flood);
    drop(held);
}

/// Opens `leases` leases, each with `files` 4 KiB files; returns them.
fn populate(daemon: &Daemon, leases: usize, files: usize) -> Vec<Client> {
    let started = Instant::now();
    let held: Vec<Client> = (0..leases)
        .map(|i| {
            let mut c = Client::connect(daemon.socket(), vm(&format!("vm-{i}"))).unwrap();
            for f in 0..files {
                c.create(&name(&format!("f{f}")), 4096, MemoryKind::Memfd)
                    .unwrap();
            }
            c
        })
        .collect();
    eprintln!(
        "populated {leases} leases x {files} files in {:?}",
        started.elapsed()
    );
    held
}

fn bind_rate(daemon: &Daemon) -> f64 {
    let mut c = Client::connect(daemon.socket(), vm("bench-binder")).unwrap();
    c.create(&name("ram"), 1 << 20, MemoryKind::Memfd).unwrap();
    let bind = BindRequest::new(0, GuestAddress(0), name("ram"), 0, 1 << 20);
    let start = Instant::now();
    for _ in 0..RATE_REQUESTS / 2 {
        c.bind(&bind).unwrap();
        c.unbind(0).unwrap();
    }
    let rate = per_second(RATE_REQUESTS, start.elapsed());
    c.destroy(&name("ram")).unwrap();
    rate
}

fn status_rate(daemon: &Daemon) -> f64 {
    let mut c = Client::connect_control(daemon.socket()).unwrap();
    let query = gmem_protocol::wire::StatusQuery {
        section: gmem_protocol::wire::StatusSection::Files,
        start: 0,
    };
    let start = Instant::now();
    for _ in 0..RATE_REQUESTS / 10 {
        c.call(&gmem_protocol::wire::RequestBody::Status(query), &[])
            .unwrap();
    }
    per_second(RATE_REQUESTS / 10, start.elapsed())
}

/// Operator round trips, back to back, for `duration`.
fn round_trips(daemon: &Daemon, duration: Duration) -> Vec<Duration> {
    let mut trips = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut c = Client::connect_control(daemon.socket()).unwrap();
        c.set_timeout(Some(Duration::from_secs(5))).unwrap();
        let query = |section| gmem_protocol::wire::StatusQuery { section, start: 0 };
        for section in [
            gmem_protocol::wire::StatusSection::Files,
            gmem_protocol::wire::StatusSection::Leases,
        ] {
            c.call(
                &gmem_protocol::wire::RequestBody::Status(query(section)),
                &[],
            )
            .unwrap();
        }
        trips.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    trips
}

fn print_trips(label: &str, trips: &[Duration]) {
    let mut sorted = trips.to_vec();
    sorted.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((sorted.len() - 1) as f64 * q) as usize;
        sorted[i]
    };
    println!(
        "{label:<52} {:>7.2}ms {:>7.2}ms {:>7.2}ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*sorted.last().unwrap())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_second(requests: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let r = requests as f64 / elapsed.as_secs_f64();
    r
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
