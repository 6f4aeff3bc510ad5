//! gmemd survives its own crash (issue 10): with its keeper (the README's
//! command), the serving process killed with SIGKILL under traffic comes
//! back with every file, content, lease, binding and connection; clients
//! see at most a restart notice. Under real systemd: `systemd_fdstore.rs`.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

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
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        crash_and_wait(&daemon);
        check();
    }
    std::thread::sleep(Duration::from_millis(300));
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
    let log = daemon.log();
    assert!(log.contains("restart 2 of the serving process"), "{log}");
    assert!(log.contains(" 20 lease(s), 20 connection(s) from"), "{log}");
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
