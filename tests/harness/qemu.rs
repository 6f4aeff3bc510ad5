//! Helpers of the QEMU end-to-end tests: a VM started with `gmemctl launch`
//! (killed with its whole process group on drop, its console and launcher
//! log printed if the test failed), the guest's serial console and tick
//! lines, guest memory read over QMP (gmemctl's own client), and a scan of
//! a memory file.
//!
//! Every VM runs under TCG (`-accel kvm` does not boot Linux on the
//! development machine) with a `-chardev file,…,append=on` console, so the
//! log of a VM survives upgrades: the new QEMU appends where the old one
//! stopped.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use gmemctl::qmp::QmpClient;
use serde_json::Value;

use crate::guest::guest;
use crate::{wait_until, ChildGuard, Daemon};

/// Bound on booting the guest to a given line (TCG, possibly next to other
/// tests on 2 cores; a quiet machine needs 4–7 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A file in `qemu-configs/`.
pub fn qemu_config(name: &str) -> PathBuf {
    crate::workspace_path("qemu-configs").join(name)
}

/// Whether `pid` names a live process (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Target of `/proc/PID/fd/FD`, e.g. `socket:[1234]`.
pub fn fd_target(pid: u32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// File `name` in the JSON of `gmemctl status`.
pub fn status_file<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no file {name} in {status}"))
}

/// The bindings of file `name` in the JSON of `gmemctl status`, as
/// `(gpa, offset, size)` in the order it lists them.
pub fn status_bindings(status: &Value, name: &str) -> Vec<(u64, u64, u64)> {
    status_file(status, name)["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| {
            let field = |key: &str| b[key].as_u64().unwrap_or_else(|| panic!("{key} in {b}"));
            (field("gpa"), field("offset"), field("size"))
        })
        .collect()
}

/// Runs `gmemctl ARGS` against `daemon`.
pub fn gmemctl(daemon: &Daemon, args: &[&str]) -> Output {
    daemon
        .gmemctl()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("gmemctl runs")
}

/// Runs `gmemctl ARGS --json` (or `status --json`), which must succeed.
pub fn gmemctl_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = gmemctl(daemon, &all);
    assert!(
        out.status.success(),
        "gmemctl {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gmemctl {all:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The first offset of `needle` in the file behind `fd`.
pub fn find_bytes(fd: &OwnedFd, needle: &[u8]) -> Option<u64> {
    const CHUNK: usize = 8 << 20;
    let mut buf = vec![0u8; CHUNK + needle.len()];
    let mut offset = 0u64;
    loop {
        let n = rustix::io::pread(fd, &mut buf, offset).expect("pread");
        if n < needle.len() {
            return None;
        }
        if let Some(at) = buf[..n].windows(needle.len()).position(|w| w == needle) {
            return Some(offset + at as u64);
        }
        // Overlap by needle.len() - 1 so a match across chunks is found.
        offset += (n - needle.len() + 1) as u64;
    }
}

/// One `GMEM-GUEST: tick N uptime U [memtotal_kb K memblocks_online B …]` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Tick number (1 per second since the guest's init started ticking).
    pub n: u64,
    /// Guest uptime in seconds.
    pub uptime: f64,
    /// `MemTotal` in KiB (`gmem.memwatch=1`).
    pub memtotal_kb: Option<u64>,
    /// Online memory blocks (`gmem.memwatch=1`).
    pub memblocks_online: Option<u64>,
}

impl Tick {
    /// Parses a console line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.find("GMEM-GUEST: tick ")? + "GMEM-GUEST: tick ".len()..];
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        Some(Tick {
            n: words.first()?.parse().ok()?,
            uptime: field("uptime")?.parse().ok()?,
            memtotal_kb: field("memtotal_kb").and_then(|v| v.parse().ok()),
            memblocks_online: field("memblocks_online").and_then(|v| v.parse().ok()),
        })
    }
}

/// A guest's serial console, written by QEMU to a file.
#[derive(Debug, Clone)]
pub struct SerialLog {
    path: PathBuf,
}

impl SerialLog {
    /// The log at `path`.
    pub fn new(path: PathBuf) -> Self {
        SerialLog { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        std::fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`; returns the log.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        wait_until(timeout, &format!("the guest to print {needle:?}"), || {
            let text = self.text();
            text.contains(needle).then_some(text)
        })
    }

    /// Every tick line so far.
    pub fn ticks(&self) -> Vec<Tick> {
        self.text().lines().filter_map(Tick::parse).collect()
    }

    /// The last tick so far.
    pub fn last_tick(&self) -> Option<Tick> {
        self.ticks().pop()
    }

    /// Waits (bounded) for a tick numbered above `after` that satisfies `ok`.
    pub fn wait_tick(&self, after: u64, timeout: Duration, ok: impl Fn(&Tick) -> bool) -> Tick {
        wait_until(timeout, &format!("a guest tick after {after}"), || {
            self.ticks().into_iter().find(|t| t.n > after && ok(t))
        })
    }
}

/// How to launch a test VM.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// `--memory`, e.g. `512M`.
    pub memory: String,
    /// More `gmemctl launch` options (`--max-memory 2G`, `--file x`).
    pub gmemctl_args: Vec<String>,
    /// Guest kernel parameters (`gmem.tick=1 …`).
    pub params: String,
    /// More QEMU arguments (`-S`).
    pub qemu_args: Vec<String>,
    /// Give QEMU a QMP monitor of the test's own (not for VMs that get
    /// upgraded: both QEMUs would bind its path).
    pub test_qmp: bool,
    /// `-readconfig` file in `qemu-configs/` [default: `q35-gmemd.cfg`].
    pub config: Option<&'static str>,
}

impl LaunchSpec {
    /// `memory` of RAM, booting with `params`.
    pub fn new(memory: &str, params: &str) -> Self {
        LaunchSpec {
            memory: memory.into(),
            params: params.into(),
            ..LaunchSpec::default()
        }
    }
}

/// The `gmemctl launch` command line for a VM named `name` (program first).
pub fn launch_command(daemon: &Daemon, dir: &Path, name: &str, spec: &LaunchSpec) -> Command {
    let qemu = crate::e2e::qemu().expect("QEMU is present (checked by the test)");
    let mut cmd = daemon.gmemctl();
    cmd.args(["launch", "--vm", name, "--memory", &spec.memory])
        .args(&spec.gmemctl_args)
        .arg("--")
        .arg(qemu)
        .args(["-accel", "tcg", "-readconfig"])
        .arg(qemu_config(spec.config.unwrap_or("q35-gmemd.cfg")))
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-chardev"])
        .arg(format!(
            "file,id=ser0,path={},append=on",
            dir.join(format!("{name}.serial")).display()
        ))
        .args(["-serial", "chardev:ser0"])
        .args(guest().boot_args(&spec.params))
        .args(&spec.qemu_args);
    if spec.test_qmp {
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            dir.join(format!("{name}.test-qmp")).display()
        ));
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// A VM run by `gmemctl launch` in a process group of its own.
#[derive(Debug)]
pub struct Vm {
    /// VM name.
    pub name: String,
    /// Its console.
    pub serial: SerialLog,
    test_qmp: PathBuf,
    log: PathBuf,
    run_dir: PathBuf,
    launcher: ChildGuard,
}

impl Vm {
    /// Launches `name` and waits until QEMU runs (the VM's record exists).
    pub fn launch(daemon: &Daemon, dir: &Path, name: &str, spec: &LaunchSpec) -> Vm {
        let cmd = launch_command(daemon, dir, name, spec);
        Vm::start(
            daemon,
            dir,
            name,
            cmd,
            Some(dir.join(format!("{name}.serial"))),
        )
    }

    /// Runs `cmd` (a `gmemctl launch` of VM `name`, any VMM) with its output
    /// in `DIR/NAME.launcher.log` and waits until the VMM runs. The console
    /// is `serial`, or that log (a VMM writing its console to stdout).
    pub fn start(
        daemon: &Daemon,
        dir: &Path,
        name: &str,
        mut cmd: Command,
        serial: Option<PathBuf>,
    ) -> Vm {
        let log = dir.join(format!("{name}.launcher.log"));
        let file = std::fs::File::create(&log).expect("launcher log");
        cmd.stdout(file.try_clone().expect("dup")).stderr(file);
        let mut vm = Vm {
            name: name.to_owned(),
            serial: SerialLog::new(serial.unwrap_or_else(|| log.clone())),
            test_qmp: dir.join(format!("{name}.test-qmp")),
            log,
            run_dir: daemon.dir().join("vms"),
            launcher: ChildGuard::spawn("gmemctl launch", cmd),
        };
        wait_until(
            Duration::from_secs(30),
            "gmemctl launch to start the VMM",
            || {
                if let Ok(Some(status)) = vm.launcher.child().try_wait() {
                    panic!(
                        "gmemctl launch exited with {status}:\n{}",
                        vm.launcher_log()
                    );
                }
                vm.try_record()
                    .filter(|r| r["vmm"]["process"]["pid"].is_u64())
            },
        );
        vm
    }

    fn try_record(&self) -> Option<Value> {
        let text =
            std::fs::read_to_string(self.run_dir.join(format!("{}.json", self.name))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The VM's record (`RUN_DIR/NAME.json`).
    pub fn record(&self) -> Value {
        self.try_record().expect("the VM's record")
    }

    /// The pid of the VMM process (QEMU, cloud-hypervisor) running the VM now.
    pub fn vmm_pid(&self) -> u32 {
        let pid = self.record()["vmm"]["process"]["pid"]
            .as_u64()
            .expect("pid");
        u32::try_from(pid).expect("pid fits")
    }

    /// The launcher's pid.
    pub fn launcher_pid(&self) -> u32 {
        self.launcher.pid()
    }

    /// SIGKILLs the launcher only (QEMU runs on).
    pub fn kill_launcher(&mut self) -> ExitStatus {
        self.launcher.kill9()
    }

    /// Waits (bounded) for the launcher to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.launcher.wait_exit(timeout)
    }

    /// What the launcher (and QEMU, which shares its stdio) printed.
    pub fn launcher_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The test's own QMP monitor (`LaunchSpec::test_qmp`).
    pub fn qmp(&self) -> QmpClient {
        QmpClient::connect(&self.test_qmp, Duration::from_secs(30)).expect("the test's QMP socket")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- serial console of {} ({}) -----\n{}\n----- gmemctl launch log -----\n{}",
                self.name,
                self.serial.path().display(),
                self.serial.text(),
                self.launcher_log()
            );
        }
        // The launcher's process group goes with its guard; a VMM it no
        // longer leads (the launcher was killed, or an upgrade target
        // started without it) would outlive the test, a TCG guest burning
        // a core for every test after.
        self.launcher.stop();
        if let Some(pid) = self.leftover_vmm() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Vm {
    /// The VM's recorded VMM process if it still runs (checked by its
    /// start time, so a reused pid is left alone).
    fn leftover_vmm(&self) -> Option<i32> {
        let record = self.try_record()?;
        let process = &record["vmm"]["process"];
        let pid = i32::try_from(process["pid"].as_u64()?).ok()?;
        let start = process["start_time"].as_u64()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22 (starttime), counted after the command's closing paren.
        let now_start: u64 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        (now_start == start && pid_alive(u32::try_from(pid).ok()?)).then_some(pid)
    }
}

/// Reads `len` bytes of guest-physical memory at `gpa` (HMP `xp`).
pub fn read_guest(qmp: &mut QmpClient, gpa: u64, len: usize) -> Vec<u8> {
    let out = qmp
        .human_monitor_command(&format!("xp /{len}xb {gpa:#x}"))
        .expect("xp");
    // Lines: "0000000001234000: 0x47 0x4d ...".
    out.lines()
        .filter_map(|l| l.split_once(':').map(|(_, bytes)| bytes))
        .flat_map(str::split_whitespace)
        .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).expect("hex byte"))
        .collect()
}

/// How long something took, for the figures the tests print.
pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_parse() {
        let t = Tick::parse("\u{1b}[0mGMEM-GUEST: tick 12 uptime 14.39 memtotal_kb 546064 memblocks_online 5 memblocks_total 5\r").unwrap();
        assert_eq!(t.n, 12);
        assert!((t.uptime - 14.39).abs() < 1e-9);
        assert_eq!(
            (t.memtotal_kb, t.memblocks_online),
            (Some(546_064), Some(5))
        );
        let t = Tick::parse("GMEM-GUEST: tick 3 uptime 5.01").unwrap();
        assert_eq!((t.n, t.memtotal_kb), (3, None));
        assert!(Tick::parse("GMEM-GUEST: done").is_none());
    }

    #[test]
    fn find_bytes_across_chunks() {
        let file = tempfile::tempfile().unwrap();
        let fd = OwnedFd::from(file);
        let at = (8 << 20) - 3;
        rustix::io::pwrite(&fd, b"needle", at).unwrap();
        assert_eq!(find_bytes(&fd, b"needle"), Some(at));
        assert_eq!(find_bytes(&fd, b"absent"), None);
    }
}
