//! gmemd's vhost-user device with real QEMU 10: QEMU's own memory table
//! confirms the bindings `gmemctl launch` recorded (q35 and i440fx splits
//! of a 4 GiB guest, a hotplugged DIMM), records the ones nobody reported,
//! and a disk served by gmemd outlives QEMU, and serves on across gmemd's
//! crash and restart and QEMU's upgrade while the guest does I/O.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::daemon::KEEPER;
use gmem_tests::qemu::{gmemctl, gmemctl_json, LaunchSpec, Vm, BOOT_TIMEOUT};
use gmem_tests::{e2e, wait_until, ChildGuard, Daemon};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `gmemctl launch` of a SeaBIOS-only QEMU (no kernel, no disk) with
/// its vhost-user device (no disk).
fn launch_seabios(
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    memory: &str,
    extra: &[&str],
    qemu: &[&str],
) -> ChildGuard {
    let program = e2e::qemu().expect("checked by the test");
    let log = std::fs::File::create(dir.join(format!("{name}.launcher.log"))).unwrap();
    let mut cmd: Command = daemon.gmemctl();
    cmd.args(["launch", "--vm", name, "--memory", memory])
        .args(extra)
        .arg("--")
        .arg(program)
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-monitor", "none", "-serial", "none"])
        .args(qemu)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    ChildGuard::spawn("gmemctl launch", cmd)
}

/// The bindings of `file` in `gmemctl status --json`.
fn bindings(daemon: &Daemon, file: &str) -> Vec<Value> {
    let status = gmemctl_json(daemon, &["status"]);
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == file)
        .map(|f| f["bindings"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// Waits until every binding of `file` is confirmed; returns them and how
/// long it took.
fn wait_confirmed(daemon: &Daemon, file: &str, count: usize) -> (Vec<Value>, Duration) {
    let t0 = Instant::now();
    let b = wait_until(
        Duration::from_secs(60),
        "QEMU's memory table to confirm the bindings",
        || {
            let b = bindings(daemon, file);
            (b.len() == count && b.iter().all(|b| b["confirmed"] == true)).then_some(b)
        },
    );
    (b, t0.elapsed())
}

fn ranges(bindings: &[Value]) -> Vec<(u64, u64, u64)> {
    let mut r: Vec<(u64, u64, u64)> = bindings
        .iter()
        .map(|b| {
            (
                b["gpa"].as_u64().unwrap(),
                b["offset"].as_u64().unwrap(),
                b["size"].as_u64().unwrap(),
            )
        })
        .collect();
    r.sort_unstable();
    r
}

#[test]
fn qemus_memory_table_confirms_the_q35_split_of_a_4g_guest() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let _qemu = launch_seabios(
        &daemon,
        dir.path(),
        "q35-vm",
        "4G",
        &[],
        &["-machine", "q35"],
    );
    let (b, took) = wait_confirmed(&daemon, "q35-vm.ram", 2);
    assert_eq!(
        ranges(&b),
        [(0, 0, 2 * GIB), (4 * GIB, 2 * GIB, 2 * GIB)],
        "{b:?}"
    );
    eprintln!("q35 4 GiB: memory table confirmed {took:?} after launch");
    let log = daemon.log();
    assert!(log.contains("memory table of 2 region(s)"), "{log}");

    // gmemd maps the guest's RAM (the device's view of it), never into a
    // core dump: both regions are MADV_DONTDUMP.
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", daemon.pid())).unwrap();
    let mut ram_maps = 0;
    let mut header = "";
    for line in smaps.lines() {
        if line.contains("memfd:gmemd:q35-vm.ram") {
            header = line;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if !header.is_empty() {
                assert!(
                    flags.split_whitespace().any(|f| f == "dd"),
                    "{header}: {flags}"
                );
                ram_maps += 1;
                header = "";
            }
        }
    }
    assert_eq!(ram_maps, 2, "gmemd maps both RAM regions");
}

#[test]
fn qemus_memory_table_confirms_the_i440fx_split() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let _qemu = launch_seabios(&daemon, dir.path(), "pc-vm", "4G", &[], &["-machine", "pc"]);
    let (b, _) = wait_confirmed(&daemon, "pc-vm.ram", 2);
    assert_eq!(
        ranges(&b),
        [(0, 0, 3 * GIB), (4 * GIB, 3 * GIB, GIB)],
        "{b:?}"
    );
}

#[test]
fn a_hotplugged_dimm_is_confirmed_too() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let _qemu = launch_seabios(
        &daemon,
        dir.path(),
        "dimm-vm",
        "512M",
        &["--max-memory", "2G", "--slots", "2"],
        &["-machine", "q35"],
    );
    wait_confirmed(&daemon, "dimm-vm.ram", 1);
    let report = gmemctl_json(&daemon, &["hotplug", "dimm-vm", "128M"]);
    let addr = report["addr"].as_u64().unwrap();
    let (b, took) = wait_confirmed(&daemon, "dimm-vm.dimm0", 1);
    assert_eq!(ranges(&b), [(addr, 0, 128 * MIB)]);
    // QEMU reported the DIMM before gmemctl bound it; the binding
    // recorded from its table moved to the slot gmemctl asked for.
    assert_eq!(b[0]["slot"], report["slot"], "{b:?} {report}");
    eprintln!("hotplugged DIMM confirmed {took:?} after the hotplug");
}

#[test]
fn a_disk_served_by_gmemd_outlives_qemu() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("p{}", std::process::id());
    let mut spec = LaunchSpec::new("256M", &format!("gmem.disk=write:{pattern}"));
    spec.gmemctl_args = vec!["--disk".into(), "scratch=16M".into()];
    let mut vm = Vm::launch(&daemon, dir.path(), "disk-vm", &spec);
    let console = vm.serial.wait_for("GMEM-GUEST: disk says", BOOT_TIMEOUT);
    assert!(
        console.contains(&format!("disk says GMEM-DISK:{pattern}")),
        "{console}"
    );
    assert!(console.contains("disk size 32768 sectors"), "{console}");
    assert!(vm.wait_exit(BOOT_TIMEOUT).success());

    // A second QEMU of the same VM reads what the first wrote.
    let dir2 = tempfile::tempdir().unwrap();
    // (Ticking on afterwards, so the check below sees QEMU alive.)
    let mut spec = LaunchSpec::new("256M", "gmem.disk=read gmem.tick=1");
    spec.gmemctl_args = vec!["--disk".into(), "scratch=16M".into()];
    let mut vm = Vm::launch(&daemon, dir2.path(), "disk-vm", &spec);
    let console = vm.serial.wait_for("GMEM-GUEST: disk says", BOOT_TIMEOUT);
    assert!(
        console.contains(&format!("disk says GMEM-DISK:{pattern}")),
        "{console}"
    );
    // Its RAM binding was confirmed by the device too.
    wait_confirmed(&daemon, "disk-vm.ram", 1);
    vm.kill_launcher();
}

/// Waits for `more` rounds of guest disk I/O past the current ones.
fn wait_io(vm: &Vm, more: u64, what: &str) -> u64 {
    gmem_tests::vhost::wait_io(vm, more, BOOT_TIMEOUT, what)
}

fn all_confirmed(daemon: &Daemon, file: &str) -> bool {
    let b = bindings(daemon, file);
    !b.is_empty() && b.iter().all(|b| b["confirmed"] == true)
}

#[test]
fn guest_disk_io_goes_on_across_gmemd_crash_restart_and_qemu_upgrade() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start_with(&[KEEPER]);
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LaunchSpec::new("256M", "gmem.disk=io:1000000");
    spec.gmemctl_args = vec!["--disk".into(), "scratch=16M".into()];
    let mut vm = Vm::launch(&daemon, dir.path(), "io-vm", &spec);
    wait_io(&vm, 3, "the guest's first disk I/O");

    // gmemd's serving process dies mid-I/O: QEMU reconnects to the new one,
    // resubmits what was not done, and every round still verifies.
    let served_by = daemon.serving_pid();
    let pid = Pid::from_raw(i32::try_from(served_by).unwrap()).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    wait_io(&vm, 5, "disk I/O after gmemd's SIGKILL");
    assert_ne!(daemon.serving_pid(), served_by);
    wait_until(Duration::from_secs(30), "the table confirmed again", || {
        all_confirmed(&daemon, "io-vm.ram").then_some(())
    });

    // A restart in place: the same.
    let out = gmemctl(&daemon, &["restart"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_io(&vm, 5, "disk I/O after gmemctl restart");

    // QEMU's upgrade: the new QEMU connects to the same device and takes
    // over the disk with the guest.
    let up = gmemctl_json(&daemon, &["upgrade", "io-vm"]);
    assert!(up["new_pid"].is_u64(), "{up}");
    wait_io(&vm, 5, "disk I/O after the upgrade");
    wait_until(
        Duration::from_secs(30),
        "the new QEMU's table confirmed",
        || all_confirmed(&daemon, "io-vm.ram").then_some(()),
    );
    // QEMU connected four times: at start, after the SIGKILL, after the
    // restart, and the upgrade's new QEMU.
    let log = daemon.log();
    let admitted = log
        .lines()
        .filter(|l| l.contains("device d0 connection") && l.contains(": pid "))
        .count();
    assert!(admitted >= 4, "{admitted} device connections:\n{log}");
    vm.kill_launcher();
}

#[test]
fn a_qemu_started_by_hand_gets_its_bindings_recorded_from_its_table() {
    let Some(program) = e2e::qemu() else {
        return;
    };
    let daemon = Daemon::start();
    // The tool opens the lease and the RAM, asks for the device and binds
    // nothing: it does not know where QEMU will put the RAM.
    let mut lease =
        gmem_protocol::Client::connect(daemon.socket(), gmem_tests::vm("by-hand")).unwrap();
    let ram_name = gmem_tests::name("ram");
    let (ram, _) = lease
        .create_or_open(&ram_name, 3 * GIB, gmem_protocol::wire::MemoryKind::Memfd)
        .unwrap();
    let dev = lease.device(None, 1).unwrap();
    // QEMU inherits the RAM fd at its number.
    rustix::io::fcntl_setfd(&ram, rustix::io::FdFlags::empty()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ram);
    let mut cmd = Command::new(program);
    cmd.args([
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ])
    .args([
        "-monitor",
        "none",
        "-serial",
        "none",
        "-machine",
        "q35,memory-backend=mem",
    ])
    .args(["-m", "3G", "-object"])
    .arg(format!(
        "memory-backend-file,id=mem,size=3G,mem-path=/proc/self/fd/{fd},share=on"
    ))
    .arg("-chardev")
    .arg(format!("socket,id=vu,path={},reconnect-ms=500", dev.path))
    .args(["-device", "vhost-user-blk-pci,chardev=vu,num-queues=1"])
    .stdin(Stdio::null());
    let _qemu = ChildGuard::spawn("qemu", cmd);
    // q35 with 3 GiB: 2 GiB below 4 GiB, the rest above.
    let (b, _) = wait_confirmed(&daemon, "ram", 2);
    assert_eq!(
        ranges(&b),
        [(0, 0, 2 * GIB), (4 * GIB, 2 * GIB, GIB)],
        "{b:?}"
    );
    let mut slots: Vec<u64> = b.iter().map(|b| b["slot"].as_u64().unwrap()).collect();
    slots.sort_unstable();
    assert_eq!(slots, [0x8000, 0x8001], "recorded from the table");
    drop(lease);
}
