//! `gmemctl launch` with real QEMU 10: a Linux guest boots from gmemd
//! memory and what it wrote to its RAM is in gmemd's file after QEMU
//! exits; the bindings recorded are where QEMU really maps RAM; memory
//! options are refused before anything starts.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;
use std::time::{Duration, Instant};

use gmem_tests::qemu::{
    elapsed_ms, find_bytes, gmemctl, gmemctl_json, status_bindings, status_file, LaunchSpec, Vm,
    BOOT_TIMEOUT,
};
use gmem_tests::{e2e, vm_file, ChildGuard, Daemon};

const MIB: u64 = 1 << 20;

#[test]
fn a_linux_guest_boots_from_gmemd_memory_and_its_ram_outlives_qemu() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("boot-{}", std::process::id());
    let t0 = Instant::now();
    let mut vm = Vm::launch(
        &daemon,
        dir.path(),
        "boot-vm",
        &LaunchSpec::new("512M", &format!("gmem.marker={marker}")),
    );

    // While QEMU runs, its lease holds the binding QEMU uses: all 512 MiB at gpa 0.
    let status = gmemctl_json(&daemon, &["status"]);
    let ram = status_file(&status, "boot-vm.ram");
    assert_eq!(ram["owner"]["name"], "boot-vm", "{status}");
    assert_eq!(ram["size"], 512 * MIB);
    let bindings = ram["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 1, "{status}");
    assert_eq!(
        (
            &bindings[0]["slot"],
            &bindings[0]["gpa"],
            &bindings[0]["offset"],
            &bindings[0]["size"]
        ),
        (&0.into(), &0.into(), &0.into(), &(512 * MIB).into())
    );
    assert_eq!(status["leases"][0]["name"], "boot-vm");
    // The lease's process is QEMU, which holds the lease socket, not the
    // launcher that opened it and handed it over.
    assert_eq!(status["leases"][0]["pid"], vm.vmm_pid(), "{status}");
    assert_ne!(status["leases"][0]["pid"], vm.launcher_pid(), "{status}");

    vm.serial.wait_for("GMEM-GUEST: init started", BOOT_TIMEOUT);
    let boot_ms = elapsed_ms(t0);
    let exit = vm.wait_exit(BOOT_TIMEOUT);
    assert!(exit.success(), "gmemctl launch exited with {exit}");
    let console = vm.serial.text();
    assert!(
        console.contains("GMEM-GUEST: marker written") && console.contains("GMEM-GUEST: done"),
        "{console}"
    );

    // QEMU is gone: so is the lease, the memory stays, unowned.
    daemon.wait_no_leases();
    let status = gmemctl_json(&daemon, &["status"]);
    let ram = status_file(&status, "boot-vm.ram");
    assert!(ram["owner"].is_null() && ram["bindings"].as_array().unwrap().is_empty());
    // What the guest wrote into its RAM (a tmpfs file) is in gmemd's file,
    // read through an fd OPENed from gmemd by an operator.
    let (fd, info) = daemon
        .control()
        .open_in(&vm_file("boot-vm", "boot-vm.ram"))
        .unwrap();
    assert_eq!(info.size, 512 * MIB);
    let needle = format!("GMEM-MARKER:{marker}\n");
    let at = find_bytes(&fd, needle.as_bytes()).expect("the guest's marker in gmemd's file");
    eprintln!(
        "boot to /init from gmemd memory: {boot_ms:.0} ms (TCG, 512 MiB); marker at file offset \
         {at:#x}; whole run {:.0} ms",
        elapsed_ms(t0)
    );
    // The launcher cleaned up after itself.
    let run_dir = daemon.dir().join("vms");
    assert!(!run_dir.join("boot-vm.json").exists());
    assert!(!run_dir.join("boot-vm.qmp").exists());
    assert!(!run_dir.join("boot-vm.ctl").exists());
    assert!(!run_dir.join("boot-vm.lock").exists());
    // And said how QEMU ended.
    let log = vm.launcher_log();
    assert!(log.contains("exited normally (status 0)"), "{log}");
}

/// `info mtree` lines `GPA-END (prio 0, ram): alias ram-below-4g @gmem-ram OFF-END`
/// as (gpa, offset, size), once each.
fn mtree_ram(mtree: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for line in mtree.lines() {
        if !(line.contains("alias ram-below-4g @gmem-ram")
            || line.contains("alias ram-above-4g @gmem-ram"))
        {
            continue;
        }
        let ranges: Vec<(u64, u64)> = line
            .split_whitespace()
            .filter_map(|w| {
                let (a, b) = w.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .collect();
        let [(gpa, end), (offset, _)] = ranges[..] else {
            panic!("unexpected mtree line {line}");
        };
        let entry = (gpa, offset, end - gpa + 1);
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out.sort_unstable();
    out
}

#[test]
fn the_recorded_bindings_are_where_qemu_maps_ram() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // (machine options, RAM): no split, q35's 2 GiB split from 2.75 GiB,
    // i440fx's 3 GiB split from 3.5 GiB, max-ram-below-4g.
    let cases: [(&[&str], &str); 4] = [
        (&[], "2815M"),
        (&[], "3G"),
        (&["-machine", "pc"], "3584M"),
        (&["-machine", "max-ram-below-4g=1G"], "2G"),
    ];
    for (n, (machine, memory)) in cases.into_iter().enumerate() {
        let vm_name = format!("layout-{n}");
        let mut spec = LaunchSpec::new(memory, "");
        spec.qemu_args = machine.iter().map(|s| (*s).to_owned()).collect();
        spec.qemu_args.push("-S".into());
        spec.test_qmp = true;
        let mut vm = Vm::launch(&daemon, dir.path(), &vm_name, &spec);
        let mut qmp = vm.qmp();
        let mapped = mtree_ram(&qmp.human_monitor_command("info mtree").unwrap());
        let status = gmemctl_json(&daemon, &["status"]);
        let ram_file = format!("{vm_name}.ram");
        let mut recorded = status_bindings(&status, &ram_file);
        recorded.sort_unstable();
        assert_eq!(recorded, mapped, "{machine:?} {memory}");
        eprintln!("{machine:?} -m {memory}: QEMU maps {mapped:x?} = gmemd bindings");
        qmp.quit().unwrap();
        assert!(vm.wait_exit(Duration::from_secs(30)).success());
        daemon.wait_no_leases();
        // Sparse, but counted against gmemd's memory limit.
        daemon
            .control()
            .destroy_in(&vm_file(&vm_name, &ram_file))
            .unwrap();
    }
}

/// Runs a `gmemctl launch` that must fail fast; returns its stderr.
fn refused(mut cmd: Command) -> String {
    let log = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap());
    let mut child = ChildGuard::spawn("gmemctl launch", cmd);
    let status = child.wait_exit(Duration::from_secs(30));
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!status.success(), "launch was not refused: {text}");
    text
}

#[test]
fn memory_options_and_unmappable_kinds_are_refused_before_anything_starts() {
    let daemon = Daemon::start();
    let launch = |extra: &[&str], qemu_args: &[&str]| {
        let mut cmd = daemon.gmemctl();
        cmd.args(["launch", "--vm", "refused", "--memory", "256M"])
            .args(extra)
            .args(["--", "qemu-system-x86_64", "-machine", "q35"])
            .args(qemu_args);
        cmd
    };
    let text = refused(launch(&[], &["-m", "1G"]));
    assert!(text.contains("QEMU option -m sets guest memory"), "{text}");
    let text = refused(launch(&[], &["-machine", "memory-backend=mine"]));
    assert!(text.contains("sets the machine's memory backend"), "{text}");
    let text = refused(launch(&["--kind", "secret"], &[]));
    assert!(text.contains("ENXIO"), "{text}");
    let text = refused(launch(&[], &["-machine", "microvm"]));
    assert!(text.contains("layout is unknown"), "{text}");
    let text = refused(launch(&[], &["-daemonize"]));
    assert!(text.contains("-daemonize"), "{text}");
    // Nothing was created or leased.
    let mut ctl = daemon.control();
    assert!(ctl.files().unwrap().is_empty());
    assert!(ctl.leases().unwrap().is_empty());
    // Upgrade, hotplug and unplug of a VM that does not run say so.
    for args in [
        &["upgrade", "refused"][..],
        &["hotplug", "refused", "128M"],
        &["unplug", "refused", "dimm0"],
    ] {
        let out = gmemctl(&daemon, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("not running under gmemctl launch"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_guest_boots_from_hugetlb_memory() {
    if e2e::qemu().is_none() {
        return;
    }
    // 512 MiB of guest RAM on 2 MiB pages, reserved for this test.
    let Some(_pages) = gmem_tests::hugepages::Reservation::take(256) else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LaunchSpec::new("512M", "gmem.marker=huge");
    spec.gmemctl_args = vec!["--kind".into(), "hugetlb-2m".into()];
    spec.config = Some("q35-hugetlb.cfg");
    let mut vm = Vm::launch(&daemon, dir.path(), "huge-vm", &spec);
    assert!(vm.wait_exit(BOOT_TIMEOUT).success());
    assert!(vm.serial.text().contains("GMEM-GUEST: done"));
    let (fd, info) = daemon
        .control()
        .open_in(&vm_file("huge-vm", "huge-vm.ram"))
        .unwrap();
    assert_eq!(info.page_size, 2 * MIB);
    assert!(find_bytes(&fd, b"GMEM-MARKER:huge\n").is_some());
}
