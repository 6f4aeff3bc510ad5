//! Helpers of the cloud-hypervisor end-to-end tests: the binaries (stock
//! cloud-hypervisor, the build patched for migration on this host, and
//! `ch-remote`), a PVH guest under `gmemctl launch`, and its RAM through
//! the test's own fd of the gmemd file.
//!
//! cloud-hypervisor's console is `--serial tty`: its output lands in the
//! launcher's log, which [`crate::qemu::Vm`] reads as the serial log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::pvh::{self, GuestRam};
use crate::qemu::Vm;
use crate::{vm_file, wait_until, Daemon};

/// Bound on the PVH guest's boot (it is up within milliseconds).
pub const CH_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The cloud-hypervisor binaries.
#[derive(Debug, Clone)]
pub struct ChTools {
    /// Stock cloud-hypervisor.
    pub stock: PathBuf,
    /// cloud-hypervisor with the fixes this host needs for migration.
    pub pvm: PathBuf,
    /// `ch-remote`.
    pub remote: PathBuf,
}

/// A PVH guest VM under `gmemctl launch -- cloud-hypervisor`.
#[derive(Debug)]
pub struct ChVm {
    /// The launched VM (launcher, record, log).
    pub vm: Vm,
    /// Its RAM, through an fd the test OPENed from gmemd.
    pub ram: GuestRam,
}

/// The `gmemctl launch` of PVH guest `name` with `gmemctl_args` (`--memory
/// SIZE` at least) under `program`, extra cloud-hypervisor arguments
/// `ch_args`.
pub fn launch_command(
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    gmemctl_args: &[&str],
    program: &Path,
    ch_args: &[&str],
) -> Command {
    let mut cmd = daemon.gmemctl();
    cmd.args(["launch", "--vm", name])
        .args(gmemctl_args)
        .arg("--")
        .arg(program)
        .arg("--kernel")
        .arg(pvh::write_elf(dir))
        .args(["--serial", "tty", "--console", "off"])
        .args(ch_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

impl ChVm {
    /// Launches `name` and waits until the guest counts.
    pub fn launch(
        daemon: &Daemon,
        dir: &Path,
        name: &str,
        memory: &str,
        program: &Path,
        ch_args: &[&str],
    ) -> ChVm {
        let cmd = launch_command(daemon, dir, name, &["--memory", memory], program, ch_args);
        let vm = Vm::start(daemon, dir, name, cmd, None);
        let (fd, _) = daemon
            .control()
            .open_in(&vm_file(name, &format!("{name}.ram")))
            .expect("OPEN of the VM's memory file");
        let ch = ChVm {
            vm,
            ram: GuestRam::new(fd),
        };
        ch.vm.serial.wait_for(pvh::UP_LINE, CH_BOOT_TIMEOUT);
        ch.wait_counting();
        ch
    }

    /// Waits until the counter moves; returns the value seen last.
    pub fn wait_counting(&self) -> u32 {
        let first = self.ram.counter();
        wait_until(CH_BOOT_TIMEOUT, "the guest's counter to move", || {
            let now = self.ram.counter();
            (now != first).then_some(now)
        })
    }

    /// Has the guest power off: cloud-hypervisor and the launcher exit 0
    /// and leave nothing in the run directory. Returns the launcher's log.
    pub fn power_off_cleanly(&mut self, daemon: &Daemon) -> String {
        self.ram.power_off();
        let status = self.vm.wait_exit(CH_BOOT_TIMEOUT);
        let log = self.vm.launcher_log();
        assert_eq!(status.code(), Some(0), "{log}");
        let left: Vec<_> = std::fs::read_dir(daemon.dir().join("vms"))
            .expect("the run directory")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        assert!(left.is_empty(), "left in the run directory: {left:?}");
        log
    }

    /// The VM's API socket (`RUN_DIR/NAME.api`).
    pub fn api(&self, daemon: &Daemon) -> PathBuf {
        daemon
            .dir()
            .join("vms")
            .join(format!("{}.api", self.vm.name))
    }
}

/// `ch-remote --api-socket API ARGS`, which must succeed; its stdout.
pub fn ch_remote(tools: &ChTools, api: &Path, args: &[&str]) -> String {
    let out = Command::new(&tools.remote)
        .arg("--api-socket")
        .arg(api)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("ch-remote runs");
    assert!(
        out.status.success(),
        "ch-remote {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `VmRSS`-style field `key` (kB) of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Pids of live processes that have memory file `ino` open at fd `fd`.
pub fn holders_at(ino: u64, fd: i32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = format!("/proc/{pid}/fd/{fd}");
        let held =
            std::fs::metadata(&path).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino);
        if held && crate::qemu::pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}
