//! No client can starve the others: connection slots per principal and
//! for operators, a HELLO deadline, and a listener that rests instead of
//! spinning when gmemd runs out of fds, with a bounded log throughout.
//! (CPU and log figures are checked generously: the point is "not a
//! spinning core, not megabytes of log", not a speed target.)

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::{Duration, Instant};

use gmem_tests::tenant::{run_tenant, spawn_tenant, NOBODY, OTHER};
use gmem_tests::{wait_until, Daemon};

/// gmemd's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_millis(ticks * 1000 / hz)
}

/// `gmemctl status` as an operator: whether it answered, and how fast.
fn operator_status(daemon: &Daemon) -> (bool, Duration) {
    let start = Instant::now();
    let out = daemon
        .gmemctl()
        .args(["--timeout", "5", "status"])
        .output()
        .unwrap();
    (out.status.success(), start.elapsed())
}

#[test]
fn idle_connections_of_one_uid_lock_out_neither_operators_nor_other_clients() {
    let daemon = Daemon::start_with(&["--allow-uid", &OTHER.to_string(), "--hello-timeout", "2s"]);
    // 5,000 connections from a uid that is not even allowed, never a word.
    let mut flood = spawn_tenant(&daemon, Some(NOBODY), &["--no-hello", "flood:5000", "hold"]);
    let out = flood.wait_for_output("HOLDING", Duration::from_secs(120));
    assert!(out.contains("flood:5000 => OK 5000"), "{out}");
    let (answered, took) = operator_status(&daemon);
    assert!(answered, "an operator's status went unanswered");
    eprintln!("operator status under 5,000 idle connections: {took:?}");
    // An allowed client of another uid is served too.
    let other = run_tenant(&daemon, Some(OTHER), &["status"]);
    assert!(
        other.result("status").starts_with("OK"),
        "{:#?}",
        other.lines
    );
    // gmemd kept one principal's quota of them, not 5,000 fds.
    assert!(
        daemon.fd_count() < 200,
        "gmemd has {} fds",
        daemon.fd_count()
    );
    // Those it kept are closed once the HELLO deadline passes.
    wait_until(
        Duration::from_secs(10),
        "idle connections to be closed",
        || daemon.log().contains("no HELLO within 2s").then_some(()),
    );
    // The log says it, but not 5,000 times.
    let log = daemon.log();
    let turned_away = log.matches("turned away a connection").count();
    assert!((1..=10).contains(&turned_away), "{turned_away} lines");
}

#[test]
fn filling_gmemd_fd_limit_does_not_make_it_spin() {
    let daemon = Daemon::start();
    let pid = daemon.pid();
    // gmemd may have only 48 fds from now on.
    let limit = rustix::process::Rlimit {
        current: Some(48),
        maximum: Some(48),
    };
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()),
        rustix::process::Resource::Nofile,
        limit,
    )
    .unwrap();
    let log_before = daemon.log().len();
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    // Root is an operator: no per-principal slot quota holds it back, the
    // fd limit does.
    let mut flood = spawn_tenant(&daemon, None, &["--no-hello", "flood:500", "hold"]);
    flood.wait_for_output("HOLDING", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let wall = start.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    let logged = daemon.log().len() - log_before;
    eprintln!("fd flood: gmemd used {cpu:?} of CPU in {wall:?}, logged {logged} bytes");
    assert!(
        daemon.log().contains("accept failed"),
        "the limit was not reached"
    );
    assert!(cpu < wall / 4, "gmemd spins: {cpu:?} of CPU in {wall:?}");
    assert!(logged < 64 << 10, "gmemd logged {logged} bytes");
    let failures = daemon.log().matches("accept failed").count();
    assert!(failures <= 10, "{failures} accept failures logged");
    // The flood gone, gmemd serves again.
    flood.kill9();
    wait_until(Duration::from_secs(20), "gmemd to serve again", || {
        operator_status(&daemon).0.then_some(())
    });
}
