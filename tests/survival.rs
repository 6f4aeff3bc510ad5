//! gmemd survives its own crash (issue 10): with its keeper (the README's
//! command), the serving process killed with SIGKILL under traffic comes
//! back with every file, content, lease, binding and connection; clients
//! see at most a restart notice. Under real systemd: `systemd_fdstore.rs`.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gmem_tests::daemon::KEEPER;
use gmem_tests::qemu::gmemctl_json;
use gmem_tests::survival::{check_clients_kept, check_invariants, start_clients, Pause};
use gmem_tests::{vm_file, wait_until, Daemon};
use rustix::process::{kill_process, Pid, Signal};

fn kill9(pid: u32) {
    kill_process(
        Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
}

/// Kills the serving gmemd and waits for the keeper's next one to serve.
fn crash_and_wait(daemon: &Daemon) -> u32 {
    let before = daemon.serving_pid();
    kill9(before);
    wait_until(Duration::from_secs(20), "a new serving gmemd", || {
        let pid = daemon.serving_pid();
        (pid != before && gmem_protocol::Client::connect_control(daemon.socket()).is_ok())
            .then_some(pid)
    })
}

/// gmemd's log file as it is now. Read as a file, not through
/// [`Daemon::log`]: nothing here may open a connection of its own to gmemd,
/// which a kill could catch open and the recovery would count.
fn log_file(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.dir().join("gmemd.log")).unwrap_or_default()
}

/// gmemd's log from byte `from` on (a length [`log_file`] had earlier):
/// what was written since then.
fn log_since(daemon: &Daemon, from: usize) -> String {
    let log = log_file(daemon);
    log.get(from..)
        .unwrap_or_else(|| panic!("gmemd's log shrank below {from} bytes:\n{log}"))
        .to_owned()
}

/// Waits (up to 30 s) until each of the `clients` traffic clients
/// (`load-I`) has had a BIND served since log byte `from`: traffic runs
/// through every connection of the gmemd serving now.
fn wait_for_traffic(daemon: &Daemon, from: usize, clients: usize) {
    wait_until(Duration::from_secs(30), "a BIND of every client", || {
        let log = log_since(daemon, from);
        let vms: BTreeSet<&str> = log
            .lines()
            .filter(|l| l.contains("): bound slot 0 gpa 0x0 -> ram "))
            .filter_map(|l| l.split("(VM load-").nth(1)?.split(',').next())
            .collect();
        (vms.len() == clients).then_some(())
    });
}

#[test]
fn sigkill_under_traffic_loses_no_file_content_lease_or_binding() {
    const CLIENTS: usize = 20;
    let daemon = Daemon::start_with(&[KEEPER]);
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(Pause::default());
    let (ready, clients) = start_clients(
        daemon.socket(),
        CLIENTS,
        Arc::clone(&stop),
        Arc::clone(&pause),
    );
    ready.wait();
    let check = || {
        pause.during(CLIENTS, || {
            check_invariants(&gmemctl_json(&daemon, &["status"]))
        })
    };
    check();
    for round in 1..=2 {
        // The kill lands under traffic: every client is binding again.
        wait_for_traffic(&daemon, log_file(&daemon).len(), CLIENTS);
        let before_kill = log_file(&daemon).len();
        crash_and_wait(&daemon);
        // This round's restart, with every lease and connection back: read
        // in what was logged since this kill, not in the whole log (where
        // the first round's lines would do for the second).
        let restart = format!("restart {round} of the serving process");
        // Every lease and every client's connection: a control connection
        // (`check`'s, the wait for the restart's) that closed just before
        // the kill may be counted too, and then ends at once.
        wait_until(Duration::from_secs(30), "this restart's recovery", || {
            let log = log_since(&daemon, before_kill);
            let recovered = log.split(" 20 lease(s), ").nth(1)?;
            let connections: usize = recovered.split(' ').next()?.parse().ok()?;
            (log.contains(&restart) && connections >= CLIENTS).then_some(())
        });
        check();
    }
    // Every client goes on with the last gmemd.
    wait_for_traffic(&daemon, log_file(&daemon).len(), CLIENTS);
    stop.store(true, Ordering::Relaxed);
    let ends: Vec<_> = clients
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("a client failed: {e}"))
        })
        .collect();
    let status = gmemctl_json(&daemon, &["status"]);
    check_invariants(&status);
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), CLIENTS, "{status}");
    let files = status["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        CLIENTS,
        "no file lost, no scratch file left: {status}"
    );
    check_clients_kept(&status, &mut daemon.control(), &ends);
    for end in &ends {
        assert!(end.rounds > 0, "{} did nothing", end.vm);
    }
    let seen: u64 = ends.iter().map(|e| e.restarts_seen).sum();
    eprintln!(
        "{CLIENTS} clients, {} rounds, {seen} restart notices seen",
        ends.iter().map(|e| e.rounds).sum::<u64>()
    );
    // Leases still end with their connection.
    drop(ends);
    wait_until(Duration::from_secs(10), "the leases to end", || {
        daemon.control().leases().unwrap().is_empty().then_some(())
    });
}

#[test]
fn a_thousand_leases_and_ten_thousand_files_all_come_back() {
    const LEASES: usize = 1_000;
    const FILES: usize = 10;
    let daemon = Daemon::start_with(&[
        KEEPER,
        "--max-connections",
        "1100",
        "--max-files",
        "10100",
        "--max-files-per-vm",
        "16",
        "--quota-files",
        "100000",
    ]);
    let mut held = Vec::with_capacity(LEASES);
    for i in 0..LEASES {
        let mut c =
            gmem_protocol::Client::connect(daemon.socket(), gmem_tests::vm(&format!("many-{i}")))
                .unwrap();
        for f in 0..FILES {
            let (fd, _) = c
                .create(
                    &gmem_tests::name(&format!("f{f}")),
                    4096,
                    gmem_protocol::wire::MemoryKind::Memfd,
                )
                .unwrap();
            if f == 0 {
                rustix::io::pwrite(&fd, format!("many-{i}").as_bytes(), 0).unwrap();
            }
        }
        held.push(c);
    }
    crash_and_wait(&daemon);
    let log = daemon.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("after exec"))
        .expect("the serving line");
    eprintln!("10,000 files, 1,000 leases: {line}");
    assert!(
        log.contains("recovered 10000 file(s), 1000 lease(s), 1000 connection(s)"),
        "{log}"
    );
    let mut ctl = daemon.control();
    assert_eq!(ctl.files().unwrap().len(), LEASES * FILES);
    assert_eq!(ctl.leases().unwrap().len(), LEASES);
    for i in (0..LEASES).step_by(97) {
        let (fd, _) = ctl.open_in(&vm_file(&format!("many-{i}"), "f0")).unwrap();
        let mut buf = vec![0u8; format!("many-{i}").len()];
        rustix::io::pread(&fd, &mut buf, 0).unwrap();
        assert_eq!(buf, format!("many-{i}").as_bytes());
    }
    // Every connection still serves its lease.
    for c in held.iter_mut().step_by(101) {
        c.files().unwrap();
    }
}
