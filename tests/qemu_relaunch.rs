//! A VM's RAM outlives its QEMU: QEMU killed with SIGKILL ends the lease
//! and its bindings, and a relaunch of the VM maps the same memory with its
//! content. While the VM runs, a second launch of it, or of another VM under
//! its UUID, is refused; another VM naming its memory file gets a file of
//! its own.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_tests::qemu::{
    find_bytes, gmemctl_json, launch_command, read_guest, LaunchSpec, Vm, BOOT_TIMEOUT,
};
use gmem_tests::{e2e, vm_file, wait_until, ChildGuard, Daemon};
use rustix::process::{kill_process, Pid, Signal};

/// Runs a second `gmemctl launch` that must be refused; returns its output.
fn refused_launch(daemon: &Daemon, dir: &std::path::Path, vm: &str, spec: &LaunchSpec) -> String {
    let log = dir.join(format!("{vm}.refused.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = launch_command(daemon, dir, vm, spec);
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = ChildGuard::spawn("second gmemctl launch", cmd);
    let status = child.wait_exit(Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "a second launch was not refused: {text}");
    assert!(!text.contains("GMEM-GUEST"), "a second QEMU ran: {text}");
    text
}

#[test]
fn sigkill_ends_the_lease_and_a_relaunch_gets_the_same_memory() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("kept-{}", std::process::id());
    let spec = LaunchSpec::new("512M", &format!("gmem.marker={marker} gmem.tick=1"));
    let mut vm = Vm::launch(&daemon, dir.path(), "kill-vm", &spec);
    vm.serial
        .wait_for("GMEM-GUEST: marker written", BOOT_TIMEOUT);

    // While it runs: the same VM cannot be launched twice...
    let text = refused_launch(&daemon, dir.path(), "kill-vm", &spec);
    assert!(text.contains("VM kill-vm is already running"), "{text}");
    // ...nor can another name claim its UUID.
    let mut other = spec.clone();
    let uuid = gmem_tests::vm("kill-vm").uuid.to_string();
    other.gmemctl_args = vec!["--uuid".into(), uuid.clone()];
    let text = refused_launch(&daemon, dir.path(), "other-vm", &other);
    assert!(
        text.contains(&format!("VM {uuid} is named kill-vm")),
        "{text}"
    );
    // A refused launch leaves nothing in the run directory, not even its lock.
    let run_dir = daemon.dir().join("vms");
    for leftover in ["other-vm.lock", "other-vm.json", "other-vm.ctl"] {
        assert!(!run_dir.join(leftover).exists(), "{leftover} left behind");
    }
    let mut ctl = daemon.control();
    let leases = ctl.leases().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].vm.name.as_str(), "kill-vm");
    let ino = {
        let (fd, _) = ctl.open_in(&vm_file("kill-vm", "kill-vm.ram")).unwrap();
        rustix::fs::fstat(&fd).unwrap().st_ino
    };

    // SIGKILL QEMU: the launcher exits with 128+9, the lease and bindings go.
    let qemu = vm.vmm_pid();
    kill_process(
        Pid::from_raw(i32::try_from(qemu).unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    let status = vm.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(137), "{status}");
    // The launcher says how QEMU ended instead of exiting without a word.
    let log = vm.launcher_log();
    assert!(
        log.contains(&format!("QEMU (pid {qemu}) was killed by SIGKILL")),
        "{log}"
    );
    wait_until(Duration::from_secs(10), "the lease to end", || {
        ctl.leases().unwrap().is_empty().then_some(())
    });
    let files = ctl.files().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].owner.is_none() && files[0].bindings.is_empty());
    let (fd, _) = ctl.open_in(&vm_file("kill-vm", "kill-vm.ram")).unwrap();
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_ino, ino);
    let needle = format!("GMEM-MARKER:{marker}\n");
    let at = find_bytes(&fd, needle.as_bytes()).expect("the marker survives QEMU");
    // A fresh console log for the relaunch (the chardev appends).
    std::fs::write(vm.serial.path(), "").unwrap();
    drop(vm);

    // Relaunch, paused before the guest runs: QEMU maps the same memory,
    // the marker is at the same guest-physical address (RAM below 2.75 GiB
    // maps file offset = gpa on q35).
    let mut again = spec.clone();
    again.qemu_args = vec!["-S".into()];
    again.test_qmp = true;
    let mut vm = Vm::launch(&daemon, dir.path(), "kill-vm", &again);
    let mut qmp = vm.qmp();
    let seen = read_guest(&mut qmp, at, needle.len());
    assert_eq!(String::from_utf8_lossy(&seen), needle);
    let status = gmemctl_json(&daemon, &["status"]);
    assert_eq!(status["leases"][0]["name"], "kill-vm", "{status}");
    assert_eq!(status["files"][0]["owner"]["name"], "kill-vm", "{status}");
    assert_eq!(status["files"][0]["bindings"][0]["size"], 512u64 << 20);
    eprintln!("relaunch: marker at gpa {at:#x} seen by the new QEMU before the guest ran");

    // And it boots again from there.
    qmp.cont().unwrap();
    vm.serial.wait_tick(0, BOOT_TIMEOUT, |_| true);
    qmp.quit().unwrap();
    assert!(vm.wait_exit(Duration::from_secs(30)).success());
}
