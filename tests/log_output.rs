//! gmemd's log, which operators follow: every bind comes out, in order,
//! and what gmemd logs as it stops is out before it exits.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind};
use gmem_tests::{name, vm, wait_until, Daemon};
use rustix::process::{kill_process, Pid, Signal};

const BINDS: usize = 200;

#[test]
fn every_bind_is_logged_in_order_while_running_and_at_shutdown() {
    let mut daemon = Daemon::start();
    let mut lease = daemon.lease(vm("logged"));
    let file = name("ram");
    lease.create(&file, 1 << 20, MemoryKind::Memfd).unwrap();
    for slot in 0..BINDS {
        let slot = u32::try_from(slot).unwrap();
        let bind = BindRequest::new(
            slot,
            GuestAddress(u64::from(slot) << 20),
            file.clone(),
            0,
            4096,
        );
        lease.bind(&bind).unwrap();
        lease.unbind(slot).unwrap();
    }
    // While gmemd runs: every line is there, in the order the requests were
    // served.
    let bound = |log: &str| -> Vec<u64> {
        log.lines()
            .filter_map(|l| l.split("): bound slot ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let lines = wait_until(Duration::from_secs(10), "every bind in the log", || {
        let got = bound(&daemon.log());
        (got.len() == BINDS).then_some(got)
    });
    let want: Vec<u64> = (0..BINDS as u64).collect();
    assert_eq!(lines, want);

    // What it logs as it stops is out before it exits.
    drop(lease);
    kill_process(
        Pid::from_raw(i32::try_from(daemon.pid()).unwrap()).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "gmemd to exit", || {
        (!daemon.is_running()).then_some(())
    });
    let log = daemon.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("shutting down"), "{last}");
    assert!(log.contains("lease 1 ended"), "{log}");
}
