//! Memory made ready ahead of use, against a real gmemd: `gmemctl create
//! --prefault`, warm pools taken by a lease and by `gmemctl launch`, and
//! pool files that outlive a SIGKILL of gmemd.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use gmem_protocol::wire::MemoryKind;
use gmem_tests::daemon::KEEPER;
use gmem_tests::qemu::{gmemctl_json, LaunchSpec, Vm};
use gmem_tests::{e2e, name, vm, wait_until, Daemon};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn resident(fd: &OwnedFd) -> u64 {
    u64::try_from(rustix::fs::fstat(fd).unwrap().st_blocks).unwrap() * 512
}

fn link(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Waits until every pool is full; returns `gmemctl status --json`.
fn wait_pools_ready(daemon: &Daemon) -> Value {
    wait_until(Duration::from_secs(60), "the pools to fill", || {
        let status = gmemctl_json(daemon, &["status"]);
        let pools = status["pools"].as_array()?.clone();
        (!pools.is_empty() && pools.iter().all(|p| p["ready"] == p["count"])).then_some(status)
    })
}

/// Inodes of the pool files the process `pid` holds.
fn pool_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            target
                .to_string_lossy()
                .contains("gmemd:pool")
                .then(|| std::fs::metadata(&path).ok().map(|m| m.ino()))?
        })
        .collect()
}

#[test]
fn create_prefault_populates_the_file_and_stays_quiet_off_a_terminal() {
    let daemon = Daemon::start();
    let out = daemon
        .gmemctl()
        .args(["create", "ram", "--size", "96M", "--prefault"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("created ram: 96 MiB memfd, populated in"),
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "a progress bar off a terminal: {:?}",
        out.stderr
    );
    let status = gmemctl_json(&daemon, &["status"]);
    let prefault = &status["prefaults"][0];
    assert_eq!(prefault["name"], "ram");
    assert_eq!(prefault["state"], "populated");
    assert_eq!(prefault["populated"], 96 * MIB);
    let (fd, _) = daemon.control().open(&name("ram")).unwrap();
    assert_eq!(resident(&fd), 96 * MIB, "every page is there");
    // Again: the existing file is opened, and it is populated already.
    let out = daemon
        .gmemctl()
        .args(["create", "ram", "--size", "96M", "--prefault"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("opened ram"));
}

#[test]
fn pool_files_outlive_a_sigkill_of_gmemd_and_go_to_a_lease() {
    let daemon = Daemon::start_with(&[KEEPER, "--pool", "32Mx2", "--pool", "16M:memfdx1"]);
    let status = wait_pools_ready(&daemon);
    assert_eq!(status["pools"][0]["size"], 32 * MIB);
    assert_eq!(status["pools"][0]["kind"], "memfd");
    assert_eq!(status["pools"][1]["count"], 1);
    // The keeper holds what gmemd keeps: the pool files among them.
    let kept = pool_inodes(daemon.pid());
    assert_eq!(kept.len(), 3, "{kept:?}");

    let before = daemon.serving_pid();
    kill_process(
        Pid::from_raw(i32::try_from(before).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(20), "a new serving gmemd", || {
        let pid = daemon.serving_pid();
        (pid != before && gmem_protocol::Client::connect_control(daemon.socket()).is_ok())
            .then_some(pid)
    });
    let serving = daemon.serving_pid();
    assert_eq!(
        pool_inodes(serving),
        kept,
        "the new gmemd serves the same pool files"
    );
    let status = gmemctl_json(&daemon, &["status"]);
    assert_eq!(status["pools"][0]["ready"], 2, "{status}");

    let mut lease = daemon.lease(vm("vm-a"));
    let (fd, _) = lease
        .create(&name("ram"), 32 * MIB, MemoryKind::Memfd)
        .unwrap();
    assert!(link(&fd).contains("gmemd:pool"), "{}", link(&fd));
    assert!(kept.contains(&rustix::fs::fstat(&fd).unwrap().st_ino));
    assert_eq!(resident(&fd), 32 * MIB);
    assert!(daemon.log().contains("(32 MiB, from the pool)"));
    // The pool makes a new file in its place, a fresh inode (gmemd holds
    // the taken one too, now the VM's file, with its pool label).
    wait_pools_ready(&daemon);
    let now = pool_inodes(daemon.serving_pid());
    let fresh: Vec<_> = now.difference(&kept).collect();
    assert_eq!(fresh.len(), 1, "kept {kept:?}, now {now:?}");
    assert_ne!(*fresh[0], rustix::fs::fstat(&fd).unwrap().st_ino);
}

#[test]
fn gmemctl_launch_takes_a_pool_file() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start_with(&["--pool", "64Mx1"]);
    wait_pools_ready(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LaunchSpec::new("64M", "");
    spec.qemu_args.push("-S".into());
    spec.test_qmp = true;
    let mut vm = Vm::launch(&daemon, dir.path(), "pooled", &spec);
    let mut qmp = vm.qmp();
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pooled.ram (64 MiB, from the pool)")),
        "{log}"
    );
    qmp.quit().unwrap();
    assert!(vm.wait_exit(Duration::from_secs(30)).success());
}
