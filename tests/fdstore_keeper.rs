//! The keeper (`gmemd::fdstore::keeper`) without any service manager: the
//! probe started bare runs it and serves under it. Killed by SIGKILL, hung
//! (SIGSTOP), or dying in a loop, the serving process comes back with the
//! same memfd (same content), the same listening socket and its held
//! connections; SIGTERM ends both.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_tests::fdstore::{hold, ping, read_line, Probe};
use gmem_tests::ChildGuard;
use rustix::process::{kill_process, Pid, Signal};

const WAIT: Duration = Duration::from_secs(20);

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    kill_process(pid, signal).unwrap();
}

fn alive(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    !status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
}

fn start_keeper(probe: &Probe, extra: &[&str]) -> ChildGuard {
    let log = std::fs::File::create(probe.dir().join("keeper.log")).unwrap();
    let mut cmd = probe.keeper_command(extra);
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    ChildGuard::spawn("keeper", cmd)
}

fn keeper_log(probe: &Probe) -> String {
    std::fs::read_to_string(probe.dir().join("keeper.log")).unwrap_or_default()
}

#[test]
fn a_killed_child_comes_back_with_its_memfd_socket_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new(dir.path());
    let mut keeper = start_keeper(&probe, &[]);
    let first = probe.wait_start(0, WAIT);
    assert_eq!(first.get("restarts"), "0");
    assert_eq!(first.get("names"), "", "nothing passed at the first start");
    assert_eq!(first.get("open"), "", "nothing the keeper inherited leaks");
    assert_eq!(first.get("limit"), "16384", "FDSTORE is the keeper's limit");
    assert_eq!(first.get("watchdog_ms"), "0");
    assert_ne!(
        first.pid(),
        keeper.pid(),
        "the keeper serves nothing itself"
    );
    let (held, name) = hold(&probe.socket());
    assert_eq!(name, "c0x1");

    signal(first.pid(), Signal::KILL);
    let second = probe.wait_start(1, WAIT);
    assert_eq!(second.get("restarts"), "1", "GMEMD_RESTARTS");
    assert_eq!(
        second.names(),
        ["c0x1", "data", "gen", "listen"],
        "`gone` was removed"
    );
    assert_eq!(
        second.get("open"),
        "3,4,5,6",
        "exactly the stored fds, at 3.."
    );
    assert_eq!(second.get("data"), first.get("data"), "the same memfd");
    assert_eq!(second.get("sum"), first.get("sum"), "with the same content");
    assert_eq!(
        read_line(&held),
        "restarted gen=1",
        "the held connection survived"
    );
    assert_eq!(ping(&probe.socket()), "pong gen=1");

    // A request sent while no process serves waits in the kept socket.
    signal(second.pid(), Signal::KILL);
    assert_eq!(ping(&probe.socket()), "pong gen=2");
    let third = probe.wait_start(2, WAIT);
    assert_eq!(third.get("sum"), first.get("sum"));
    assert_eq!(read_line(&held), "restarted gen=2");

    signal(keeper.pid(), Signal::TERM);
    let status = keeper.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}:\n{}", keeper_log(&probe));
    assert!(
        !alive(third.pid()),
        "SIGTERM to the keeper ends the serving process"
    );
    let log = keeper_log(&probe);
    assert!(log.contains("restart 1 of the serving process"), "{log}");
    assert!(log.contains("restart 2 of the serving process"), "{log}");
}

#[test]
fn the_watchdog_kills_a_hung_child_and_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new(dir.path());
    let _keeper = start_keeper(&probe, &["--keeper-watchdog-ms", "300"]);
    let first = probe.wait_start(0, WAIT);
    assert_eq!(first.get("watchdog_ms"), "300", "WATCHDOG_USEC");
    // Stopped, it neither pings nor dies of SIGABRT until SIGCONT, which
    // the keeper sends with it, as systemd does.
    signal(first.pid(), Signal::STOP);
    let second = probe.wait_start(1, WAIT);
    assert_eq!(second.get("sum"), first.get("sum"));
    assert!(!alive(first.pid()));
    let log = keeper_log(&probe);
    assert!(log.contains("sent no WATCHDOG=1 in time"), "{log}");
}

#[test]
fn a_crash_loop_backs_off_and_never_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new(dir.path());
    // Generations 0 to 3 exit right after storing; 4 serves.
    let _keeper = start_keeper(&probe, &["--die-until", "4"]);
    let last = probe.wait_start(4, WAIT);
    let starts = probe.starts();
    assert_eq!(starts.len(), 5, "{}", probe.report());
    let times: Vec<u64> = starts.iter().map(|s| s.number("t")).collect();
    for (i, expected) in [100u64, 200, 400, 800].into_iter().enumerate() {
        let gap = times[i + 1] - times[i];
        assert!(
            gap >= expected * 9 / 10,
            "restart {} came after {gap} ms, before its {expected} ms delay",
            i + 1
        );
    }
    assert_eq!(last.get("sum"), starts[0].get("sum"));
    assert_eq!(ping(&probe.socket()), "pong gen=4");
}

#[test]
fn a_first_start_that_fails_holding_nothing_ends_the_keeper() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new(dir.path());
    let mut keeper = start_keeper(&probe, &["--fail-first"]);
    let status = keeper.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(7), "{}", keeper_log(&probe));
    assert!(probe.starts().is_empty());
}
