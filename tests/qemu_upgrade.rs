//! `gmemctl upgrade`: a running Linux guest moves to a new QEMU on the same
//! gmemd memory. Its console goes on where it was and its uptime continues,
//! the old QEMU is gone, the lease (same id, same bindings) is now held by
//! the new QEMU, and almost no RAM is sent. Also without a launcher: the
//! lease lives as long as QEMU does.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_tests::qemu::{
    fd_target, gmemctl_json, pid_alive, LaunchSpec, SerialLog, Tick, Vm, BOOT_TIMEOUT,
};
use gmem_tests::{e2e, wait_until, Daemon};
use gmemctl::launch::LEASE_FD;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Upgrades and checks the switch; returns the report.
fn upgrade(daemon: &Daemon, vm: &str, serial: &SerialLog) -> Value {
    let before = serial.last_tick().expect("ticking before the upgrade");
    let report = gmemctl_json(daemon, &["upgrade", vm]);
    let (old, new) = (u(&report["old_pid"]), u(&report["new_pid"]));
    assert_ne!(old, new);
    // The old QEMU is gone, the new one runs the guest.
    wait_until(Duration::from_secs(10), "the old QEMU to exit", || {
        (!pid_alive(u32::try_from(old).unwrap())).then_some(())
    });
    assert!(pid_alive(u32::try_from(new).unwrap()));
    // RAM stayed in place: only firmware/ROM pages and device state moved.
    let sent = u(&report["ram_transferred_bytes"]);
    assert!(sent < 4 << 20, "{sent} bytes of RAM sent: {report}");
    // Measured by QEMU (the shared backends it skipped, less every page it
    // sent, ROMs and video memory included): at most the guest's RAM, and
    // short of it by no more than those private blocks.
    let in_place = u(&report["ram_in_place_bytes"]);
    assert!(
        ((512 - 32) << 20..=512 << 20).contains(&in_place),
        "{in_place} bytes in place: {report}"
    );
    // The console goes on from where it was, uptime continuing.
    let after = serial.wait_tick(before.n + 2, BOOT_TIMEOUT, |_| true);
    assert!(after.uptime > before.uptime, "{before:?} -> {after:?}");
    eprintln!(
        "upgrade {vm}: QEMU {old} -> {new}; downtime {} ms, migration total {} ms, RAM sent {sent} \
         bytes, new QEMU up in {:.1} ms, handoff {:.1} ms, whole command {:.1} ms; guest tick \
         {} (uptime {}) -> {} (uptime {})",
        report["downtime_ms"],
        report["total_time_ms"],
        report["start_ms"].as_f64().unwrap(),
        report["handoff_ms"].as_f64().unwrap(),
        report["elapsed_ms"].as_f64().unwrap(),
        before.n,
        before.uptime,
        after.n,
        after.uptime
    );
    report
}

/// Ticks in order with uptime rising, none repeated and none lost (but
/// one: a console line can come out garbled); the guest booted once.
fn check_one_continuous_run(serial: &SerialLog) {
    let ticks: Vec<Tick> = serial.ticks();
    for pair in ticks.windows(2) {
        assert!(
            pair[1].n == pair[0].n + 1 || pair[1].n == pair[0].n + 2,
            "{ticks:?}"
        );
        assert!(pair[1].uptime > pair[0].uptime, "{ticks:?}");
    }
    assert_eq!(
        serial.text().matches("GMEM-GUEST: init started").count(),
        1,
        "the guest rebooted"
    );
}

#[test]
fn upgrade_keeps_the_guest_running_and_moves_no_ram() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::launch(
        &daemon,
        dir.path(),
        "up-vm",
        &LaunchSpec::new("512M", "gmem.tick=1"),
    );
    vm.serial.wait_tick(2, BOOT_TIMEOUT, |_| true);
    let first = vm.vmm_pid();
    let lease_socket = fd_target(first, LEASE_FD).expect("QEMU holds the lease socket");
    assert!(lease_socket.starts_with("socket:"), "{lease_socket}");
    let mut ctl = daemon.control();
    let lease = ctl.leases().unwrap()[0].lease;

    let report = upgrade(&daemon, "up-vm", &vm.serial);
    assert_eq!(u(&report["old_pid"]), u64::from(first));
    assert_eq!(report["supervised"], true, "{report}");
    assert_eq!(u(&report["lease"]), lease.get());
    let second = vm.vmm_pid();
    assert_eq!(u64::from(second), u(&report["new_pid"]));
    // The ledger: the same lease, now held by the new QEMU, same binding.
    assert_eq!(fd_target(second, LEASE_FD), Some(lease_socket.clone()));
    let leases = ctl.leases().unwrap();
    assert_eq!(
        (leases.len(), leases[0].lease, leases[0].bindings),
        (1, lease, 1)
    );
    // STATUS shows the process that holds the lease now: the new QEMU.
    assert_eq!(leases[0].pid, second, "{leases:?}");
    // The launcher says which QEMU it follows now.
    let log = vm.launcher_log();
    assert!(
        log.contains(&format!(
            "now following QEMU pid {second} (replacing pid {first})"
        )),
        "{log}"
    );
    let files = ctl.files().unwrap();
    assert_eq!(files[0].owner.as_ref().unwrap().lease, lease);
    assert_eq!(files[0].bindings.len(), 1);

    // Kill the launcher: the VM and its lease live on in QEMU.
    vm.kill_launcher();
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(second));
    assert_eq!(ctl.leases().unwrap().len(), 1);
    // Without a launcher the upgrade starts the new QEMU itself.
    let report = upgrade(&daemon, "up-vm", &vm.serial);
    assert_eq!(report["supervised"], false, "{report}");
    let third = vm.vmm_pid();
    assert_eq!(fd_target(third, LEASE_FD), Some(lease_socket));
    let leases = ctl.leases().unwrap();
    assert_eq!((leases[0].lease, leases[0].pid), (lease, third));
    check_one_continuous_run(&vm.serial);

    // The VM ends when its QEMU does, and so does the lease.
    kill_process(
        Pid::from_raw(i32::try_from(third).unwrap()).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    wait_until(Duration::from_secs(20), "the lease to end", || {
        ctl.leases().unwrap().is_empty().then_some(())
    });
    assert!(ctl.files().unwrap()[0].owner.is_none());
}
