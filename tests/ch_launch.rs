//! cloud-hypervisor on gmemd memory, for real: a PVH guest under `gmemctl
//! launch -- cloud-hypervisor` counts in RAM the test reads through its own
//! fd of the gmemd file; the layout gmemctl records is the one
//! cloud-hypervisor maps; a SIGKILL ends the lease and keeps the memory; a
//! relaunch counts on; another VM never gets the memory; options
//! cloud-hypervisor cannot take are refused before anything starts.

#![allow(clippy::tests_outside_test_module)]

use std::process::Command;
use std::time::Duration;

use gmem_tests::ch::{ch_remote, launch_command, ChVm, CH_BOOT_TIMEOUT};
use gmem_tests::qemu::{gmemctl, gmemctl_json, status_bindings};
use gmem_tests::tenant::{run_tenant, NOBODY};
use gmem_tests::{e2e, wait_until, Daemon};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

fn refused(mut cmd: Command) -> String {
    let out = cmd.output().expect("gmemctl runs");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "not refused: {text}");
    text
}

#[test]
fn a_pvh_guest_counts_in_gmemd_ram_and_powers_off() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ChVm::launch(&daemon, dir.path(), "ch-count", "256M", &tools.stock, &[]);

    // The guest ran from gmemd's memory: its marker and counter are in the
    // file the test opened itself.
    assert!(ch.ram.has_marker());
    assert_eq!(ch.ram.boots(), 1);
    let a = ch.wait_counting();
    let b = ch.wait_counting();
    assert!(b > a, "{a} then {b}");

    // cloud-hypervisor's own view: one shared zone on the inherited fd.
    let info: Value =
        serde_json::from_str(&ch_remote(&tools, &ch.api(&daemon), &["info"])).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    let zones = info["config"]["memory"]["zones"].as_array().unwrap();
    assert_eq!(zones.len(), 1, "{info}");
    assert_eq!(zones[0]["file"], "/proc/self/fd/201");
    assert_eq!(zones[0]["size"], 256u64 << 20);
    assert_eq!(zones[0]["shared"], true);
    // It maps the very file gmemd holds.
    let ino = rustix::fs::fstat(ch.ram.fd()).unwrap().st_ino;
    let pid = ch.vm.vmm_pid();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.lines()
            .any(|l| l.contains("rw-s") && l.split_whitespace().nth(4) == Some(&ino.to_string())),
        "{maps}"
    );
    // The lease is cloud-hypervisor's; the binding is the whole file at 0.
    let status = gmemctl_json(&daemon, &["status"]);
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{status}");
    assert_eq!(leases[0]["pid"].as_u64(), Some(u64::from(pid)), "{status}");
    assert_eq!(
        status_bindings(&status, "ch-count.ram"),
        [(0, 0, 256 << 20)]
    );

    // A second launch of the running VM is refused; gmemd memory cannot be
    // hot-plugged into cloud-hypervisor.
    let text = refused(launch_command(
        &daemon,
        dir.path(),
        "ch-count",
        &["--memory", "256M"],
        &tools.stock,
        &[],
    ));
    assert!(text.contains("VM ch-count is already running"), "{text}");
    let out = gmemctl(&daemon, &["hotplug", "ch-count", "128M"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("cannot hot-plug gmemd memory"), "{text}");

    // Powered off by the guest: cloud-hypervisor exits 0, so does the
    // launcher, which leaves a clean run directory; the lease ends, the
    // memory stays, unowned, counter and all.
    let log = ch.power_off_cleanly(&daemon);
    assert!(
        log.contains(&format!("cloud-hypervisor (pid {pid}) exited normally")),
        "{log}"
    );
    daemon.wait_no_leases();
    let last = ch.ram.counter();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ch.ram.counter(), last);
    let files = daemon.control().files().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].owner.is_none() && files[0].bindings.is_empty());
}

#[test]
fn the_recorded_bindings_are_where_cloud_hypervisor_maps_ram() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // 4 GiB: 3 GiB below the 32-bit hole, 1 GiB from 4 GiB on. The memfd is
    // sparse, nothing is touched above the guest's first pages.
    let ch = ChVm::launch(&daemon, dir.path(), "ch-big", "4G", &tools.stock, &["-v"]);
    let status = gmemctl_json(&daemon, &["status"]);
    let recorded = status_bindings(&status, "ch-big.ram");
    assert_eq!(
        recorded,
        [(0, 0, 3 << 30), (4 << 30, 3 << 30, 1 << 30)],
        "{status}"
    );
    // cloud-hypervisor says where it put the zone's pieces (file offsets
    // follow the zone in order).
    let log = ch.vm.launcher_log();
    let mut mapped = Vec::new();
    let mut offset = 0;
    for line in log
        .lines()
        .filter(|l| l.contains("create ram region for zone gmem-ram"))
    {
        let field = |key: &str| {
            let v = line
                .split(key)
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        let (start, size) = (field("region_start:"), field("region_size:"));
        mapped.push((start, offset, size));
        offset += size;
    }
    assert_eq!(mapped, recorded, "{log}");
}

#[test]
fn sigkill_keeps_the_memory_and_a_relaunch_counts_on() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ChVm::launch(&daemon, dir.path(), "ch-kill", "256M", &tools.stock, &[]);
    let ino = rustix::fs::fstat(ch.ram.fd()).unwrap().st_ino;
    ch.wait_counting();

    let pid = ch.vm.vmm_pid();
    kill_process(
        Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    let status = ch.vm.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(137), "{status}");
    let log = ch.vm.launcher_log();
    assert!(
        log.contains(&format!(
            "cloud-hypervisor (pid {pid}) was killed by SIGKILL"
        )),
        "{log}"
    );
    daemon.wait_no_leases();
    // The memory, marker and counter are intact and no longer move.
    let killed_at = ch.ram.counter();
    assert!(killed_at > 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ch.ram.counter(), killed_at);
    assert!(ch.ram.has_marker());
    let files = daemon.control().files().unwrap();
    assert!(
        files[0].owner.is_none() && files[0].bindings.is_empty(),
        "{files:?}"
    );

    // The same command again: the same RAM, the counter goes on from where
    // it stopped (the guest never resets it), the boot count is 2.
    drop(ch);
    let ch = ChVm::launch(&daemon, dir.path(), "ch-kill", "256M", &tools.stock, &[]);
    assert_eq!(rustix::fs::fstat(ch.ram.fd()).unwrap().st_ino, ino);
    assert_eq!(ch.ram.boots(), 2);
    let now = ch.wait_counting();
    assert!(now > killed_at, "{now} after {killed_at}");
    let status = gmemctl_json(&daemon, &["status"]);
    assert_eq!(
        status["leases"][0]["pid"].as_u64(),
        Some(u64::from(ch.vm.vmm_pid()))
    );
}

#[test]
fn another_vm_is_refused_the_memory_while_it_runs_and_after_it_dies() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start_with(&["--allow-uid", &NOBODY.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ChVm::launch(&daemon, dir.path(), "ch-owner", "256M", &tools.stock, &[]);
    let pid = ch.vm.vmm_pid();

    // Another VM (another uid, not an operator) tries every way to the RAM:
    // OPEN by scoped name, BIND by name, the owner's fd through /proc and
    // pidfd_getfd.
    let attempt = |steps: &[String]| {
        let mut args = vec!["--vm", "ch-thief"];
        args.extend(steps.iter().map(String::as_str));
        run_tenant(&daemon, Some(NOBODY), &args)
    };
    let steps = [
        "open-in:ch-owner/ch-owner.ram".to_owned(),
        "bind:ch-owner.ram".to_owned(),
        format!("proc-fd:{pid}:201:stolen"),
        format!("getfd:{pid}:201:stolen"),
    ];
    let run = attempt(&steps);
    for step in &steps {
        assert!(
            run.result(step).starts_with("ERR"),
            "{step}: {}",
            run.text()
        );
    }
    assert!(!run.text().contains("GMEMPVH"), "{}", run.text());

    kill_process(
        Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    ch.vm.wait_exit(Duration::from_secs(30));
    daemon.wait_no_leases();
    // The owner is gone and its binding too: still no way in by name.
    let steps = &steps[..2];
    let run = attempt(steps);
    for step in steps {
        assert!(
            run.result(step).starts_with("ERR"),
            "{step}: {}",
            run.text()
        );
    }
    // The owner's memory is untouched by all of it.
    assert!(ch.ram.has_marker());
    assert_eq!(ch.ram.boots(), 1);
    // The VM itself relaunches on it.
    drop(ch);
    let ch = ChVm::launch(&daemon, dir.path(), "ch-owner", "256M", &tools.stock, &[]);
    assert_eq!(ch.ram.boots(), 2);
}

#[test]
fn options_cloud_hypervisor_cannot_take_are_refused_before_anything_starts() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let launch = |gmemctl_args: &[&str], ch_args: &[&str]| {
        let mut cmd = daemon.gmemctl();
        cmd.args(["launch", "--vm", "ch-refused", "--memory", "256M"])
            .args(gmemctl_args)
            .arg("--")
            .arg(&tools.stock)
            .args(ch_args);
        cmd
    };
    for (gmemctl_args, ch_args, want) in [
        (
            &[][..],
            &["--memory", "size=1G"][..],
            "--memory cannot be used under gmemctl",
        ),
        (
            &[],
            &["--memory-zone=id=z,size=1G"],
            "--memory-zone cannot be used",
        ),
        (
            &[],
            &["--api-socket", "path=/tmp/x"],
            "--api-socket cannot be used",
        ),
        (
            &["--max-memory", "1G"],
            &[],
            "--max-memory is not supported with cloud-hypervisor",
        ),
        (
            &["--disk", "d=64M"],
            &[],
            "--disk is not supported with cloud-hypervisor",
        ),
        (&["--kind", "secret"], &[], "ENXIO"),
    ] {
        let text = refused(launch(gmemctl_args, ch_args));
        assert!(text.contains(want), "{gmemctl_args:?} {ch_args:?}: {text}");
    }
    // Nothing was started or left behind.
    assert!(daemon.control().files().unwrap().is_empty());
    assert!(daemon.control().leases().unwrap().is_empty());
}

#[test]
fn a_pvh_guest_runs_from_hugetlb_memory() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let Some(_pages) = gmem_tests::hugepages::Reservation::take(128) else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let cmd = launch_command(
        &daemon,
        dir.path(),
        "ch-huge",
        &["--memory", "256M", "--kind", "hugetlb-2m"],
        &tools.stock,
        &[],
    );
    let vm = gmem_tests::qemu::Vm::start(&daemon, dir.path(), "ch-huge", cmd, None);
    vm.serial
        .wait_for(gmem_tests::pvh::UP_LINE, CH_BOOT_TIMEOUT);
    let (fd, info) = daemon
        .control()
        .open_in(&gmem_tests::vm_file("ch-huge", "ch-huge.ram"))
        .unwrap();
    assert_eq!(info.page_size, 2 << 20);
    let ram = gmem_tests::pvh::GuestRam::new(fd);
    assert!(ram.has_marker());
    let first = ram.counter();
    wait_until(CH_BOOT_TIMEOUT, "the counter to move", || {
        (ram.counter() != first).then_some(())
    });
    let pid = vm.vmm_pid();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    assert!(
        maps.contains("KernelPageSize:     2048 kB"),
        "no 2 MiB mapping"
    );
}
