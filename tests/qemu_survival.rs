//! A QEMU guest on gmemd memory runs on across gmemd's own crash (SIGKILL
//! of the serving process, its keeper keeping everything) and across
//! `gmemctl restart`; afterwards gmemd still shows its lease and binding,
//! `gmemctl upgrade` of that QEMU works, and killing QEMU still releases
//! the binding.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_tests::daemon::KEEPER;
use gmem_tests::qemu::{gmemctl, gmemctl_json, pid_alive, LaunchSpec, Vm, BOOT_TIMEOUT};
use gmem_tests::{e2e, wait_until, Daemon};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

fn kill(pid: u32, signal: Signal) {
    kill_process(Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(), signal).unwrap();
}

/// The guest's lease and binding as gmemd shows them.
fn lease_and_binding(daemon: &Daemon) -> (u64, u64, Value) {
    let status = gmemctl_json(daemon, &["status"]);
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{status}");
    let file = &status["files"][0];
    (
        leases[0]["id"].as_u64().unwrap(),
        leases[0]["bindings"].as_u64().unwrap(),
        file["owner"].clone(),
    )
}

#[test]
fn a_guest_runs_on_across_a_gmemd_crash_and_restart() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start_with(&[KEEPER]);
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::launch(
        &daemon,
        dir.path(),
        "steady",
        &LaunchSpec::new("512M", "gmem.tick=1"),
    );
    vm.serial.wait_tick(2, BOOT_TIMEOUT, |_| true);
    let qemu = vm.vmm_pid();
    let before = lease_and_binding(&daemon);
    assert_eq!(before.1, 1);

    // gmemd's serving process dies: the guest does not notice.
    let served_by = daemon.serving_pid();
    let last = vm.serial.last_tick().unwrap();
    kill(served_by, Signal::KILL);
    wait_until(Duration::from_secs(20), "a new serving gmemd", || {
        (daemon.serving_pid() != served_by
            && gmem_protocol::Client::connect_control(daemon.socket()).is_ok())
        .then_some(())
    });
    vm.serial.wait_tick(last.n + 2, BOOT_TIMEOUT, |_| true);
    assert!(pid_alive(qemu));
    assert_eq!(
        lease_and_binding(&daemon),
        before,
        "the same lease, binding, owner"
    );

    // A restart in place: the same again.
    let out = gmemctl(&daemon, &["restart"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = vm.serial.last_tick().unwrap();
    vm.serial.wait_tick(last.n + 2, BOOT_TIMEOUT, |_| true);
    assert_eq!(lease_and_binding(&daemon), before);
    let daemon_info = gmemctl_json(&daemon, &["status"])["daemon"].clone();
    assert_eq!(daemon_info["restarts"], 2, "{daemon_info}");

    // Its QEMU can still be upgraded: the launcher talks to the new gmemd.
    let report = gmemctl_json(&daemon, &["upgrade", "steady"]);
    let new_qemu = u32::try_from(report["new_pid"].as_u64().unwrap()).unwrap();
    wait_until(Duration::from_secs(10), "the old QEMU to exit", || {
        (!pid_alive(qemu)).then_some(())
    });
    let last = vm.serial.last_tick().unwrap();
    vm.serial.wait_tick(last.n + 2, BOOT_TIMEOUT, |_| true);
    let after = lease_and_binding(&daemon);
    assert_eq!((after.0, after.1), (before.0, 1));

    // And killing QEMU still releases the binding.
    kill(new_qemu, Signal::KILL);
    wait_until(Duration::from_secs(20), "the lease to end", || {
        let status = gmemctl_json(&daemon, &["status"]);
        (status["leases"].as_array().unwrap().is_empty() && status["files"][0]["owner"].is_null())
            .then_some(())
    });
    let _ = vm.wait_exit(Duration::from_secs(30));
}
