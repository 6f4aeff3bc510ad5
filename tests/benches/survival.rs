//! gmemd surviving itself (issue 10), against baselines measured in the
//! same run (release build):
//! - time from the serving process's exec to serving again, after a
//!   SIGKILL (the keeper starts it again) and after `gmemctl restart`
//!   (exec in place), with 10,000 files and 1,000 leases beside 1 file;
//! - the longest pause a client sees across `gmemctl restart`, beside the
//!   longest over the same time without one;
//! - RSS of the serving process and its keeper, and the cost per file.
//!
//! `cargo bench -p gmem-tests --bench survival`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmem_protocol::wire::MemoryKind;
use gmem_protocol::Client;
use gmem_tests::daemon::KEEPER;
use gmem_tests::{name, vm, wait_until, Daemon};

fn main() {
    std::env::set_var("GMEMD_TEST_LOG", "info");
    let args = [
        KEEPER,
        "--max-connections",
        "1100",
        "--max-files",
        "10100",
        "--max-files-per-vm",
        "16",
        "--quota-files",
        "100000",
    ];
    let small = Daemon::start_with(&args);
    let _small_held = populate(&small, 1, 1);
    let big = Daemon::start_with(&args);
    let big_held = populate(&big, 1_000, 10);

    println!(
        "{:<34} {:>14} {:>14} {:>12} {:>12}",
        "gmemd with", "SIGKILL→serving", "restart→serving", "serving RSS", "keeper RSS"
    );
    for (label, daemon) in [
        ("1 file, 1 lease (baseline)", &small),
        ("10,000 files, 1,000 leases", &big),
    ] {
        let killed = after_sigkill(daemon);
        let restarted = after_restart(daemon);
        println!(
            "{label:<34} {:>11.1} ms {:>11.1} ms {:>8} KiB {:>8} KiB",
            killed,
            restarted,
            rss_kib(daemon.serving_pid()),
            rss_kib(daemon.pid())
        );
    }
    let per_file = (rss_kib(big.serving_pid()).saturating_sub(rss_kib(small.serving_pid()))) as f64
        * 1024.0
        / 10_000.0;
    let journal = std::fs::metadata(big.dir().join("ledger.snap")).map_or(0, |m| m.len());
    println!(
        "cost per file: {per_file:.0} bytes of serving RSS, {:.0} bytes of snapshot ({} KiB for \
         10,000 files, 1,000 leases)",
        journal as f64 / 10_000.0,
        journal / 1024
    );

    println!();
    println!(
        "{:<52} {:>10} {:>10}",
        "a client's longest pause (BIND+UNBIND loop)", "longest", "requests"
    );
    let (quiet, n) = longest_pause(&big, Duration::from_secs(2), false);
    println!(
        "{:<52} {:>7.1} ms {:>10}",
        "no restart (baseline)", quiet, n
    );
    let (across, n) = longest_pause(&big, Duration::from_secs(2), true);
    println!(
        "{:<52} {:>7.1} ms {:>10}",
        "across gmemctl restart (10,000 files, 1,000 leases)", across, n
    );
    drop(big_held);
}

/// Opens `leases` leases with `files` 4 KiB files each; returns them.
fn populate(daemon: &Daemon, leases: usize, files: usize) -> Vec<Client> {
    (0..leases)
        .map(|i| {
            let mut c = Client::connect(daemon.socket(), vm(&format!("vm-{i}"))).unwrap();
            for f in 0..files {
                c.create(&name(&format!("f{f}")), 4096, MemoryKind::Memfd)
                    .unwrap();
            }
            c
        })
        .collect()
}

/// The last "serving … N ms after exec" the log holds.
fn last_exec_to_serving(daemon: &Daemon) -> f64 {
    let log = daemon.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("ms after exec"))
        .expect("a serving line");
    let ms = line.rsplit(' ').nth(3).unwrap();
    ms.parse().unwrap_or_else(|_| panic!("{line}"))
}

fn serving_lines(daemon: &Daemon) -> usize {
    daemon.log().matches("ms after exec").count()
}

fn after_sigkill(daemon: &Daemon) -> f64 {
    let before = serving_lines(daemon);
    let pid = daemon.serving_pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "gmemd to serve again", || {
        (serving_lines(daemon) > before).then_some(())
    });
    last_exec_to_serving(daemon)
}

fn after_restart(daemon: &Daemon) -> f64 {
    let before = serving_lines(daemon);
    let out = daemon
        .gmemctl()
        .args(["--timeout", "30", "restart"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(60), "gmemd to serve again", || {
        (serving_lines(daemon) > before).then_some(())
    });
    last_exec_to_serving(daemon)
}

/// The longest a BIND+UNBIND round trip took over `duration`, with a
/// `gmemctl restart` in the middle if `restart`.
fn longest_pause(daemon: &Daemon, duration: Duration, restart: bool) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let socket = daemon.socket();
    let looper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket, vm("pause-probe")).unwrap();
            c.set_timeout(Some(Duration::from_secs(30))).unwrap();
            let file = name("ram");
            let _ = c.create(&file, 1 << 20, MemoryKind::Memfd);
            let bind = gmem_protocol::wire::BindRequest::new(
                0,
                gmem_protocol::wire::GuestAddress(0),
                file,
                0,
                1 << 20,
            );
            let (mut longest, mut n) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.bind(&bind).unwrap();
                c.unbind(0).unwrap();
                longest = longest.max(t.elapsed());
                n += 1;
            }
            (longest, n)
        })
    };
    std::thread::sleep(duration / 2);
    if restart {
        let out = daemon
            .gmemctl()
            .args(["--timeout", "30", "restart"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(duration / 2);
    stop.store(true, Ordering::Relaxed);
    let (longest, n) = looper.join().unwrap();
    (longest.as_secs_f64() * 1000.0, n)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
