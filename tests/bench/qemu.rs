//! QEMU as the prefault and launch rows run it: SeaBIOS only (no disk, no
//! kernel), timed from the spawn until its QMP monitor answers, and
//! optionally until `query-status` says `running`.
//!
//! QEMU creates its monitor socket before it allocates guest RAM (memory
//! backends are created late so that a large allocation does not delay
//! the monitor), but greets a client only from its main loop, once RAM is
//! allocated and preallocated: the greeting is when QEMU is ready.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gmem_tests::{e2e, ChildGuard};
use gmemctl::qmp::QmpClient;

use crate::process::{spawn, wait_all, POLL};

/// How QEMU is asked to populate its memfd RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prealloc {
    /// Not at all: pages are faulted in as the guest touches them.
    Off,
    /// `prealloc=on`: QEMU's default, one thread per vCPU (1 here).
    On,
    /// `prealloc=on,prealloc-threads=N`.
    Threads(usize),
}

impl Prealloc {
    /// The backend options, for the tables.
    pub fn label(self) -> String {
        match self {
            Prealloc::Off => "no prealloc".to_owned(),
            Prealloc::On => "prealloc=on".to_owned(),
            Prealloc::Threads(n) => format!("prealloc=on,prealloc-threads={n}"),
        }
    }

    fn options(self) -> String {
        match self {
            Prealloc::Off => String::new(),
            Prealloc::On => ",prealloc=on".to_owned(),
            Prealloc::Threads(n) => format!(",prealloc=on,prealloc-threads={n}"),
        }
    }
}

/// The QEMU program, the accelerator it runs with here, and its version.
#[derive(Debug, Clone)]
pub struct QemuInfo {
    /// `qemu-system-x86_64`.
    pub program: PathBuf,
    /// `kvm`, or `tcg` where KVM does not start.
    pub accel: &'static str,
    /// From the QMP greeting.
    pub version: String,
}

/// Finds QEMU (`GMEM_E2E=require` makes a missing one a failure) and
/// probes once whether `-accel kvm` starts.
///
/// # Errors
/// No QEMU, or a QEMU that starts with neither accelerator.
pub fn info() -> Result<QemuInfo, String> {
    static INFO: OnceLock<Result<QemuInfo, String>> = OnceLock::new();
    INFO.get_or_init(probe).clone()
}

fn probe() -> Result<QemuInfo, String> {
    let program = e2e::qemu().ok_or("no qemu-system-x86_64")?;
    let mut last_error = String::new();
    for accel in ["kvm", "tcg"] {
        let dir = Scratch::new()?;
        let mut cmd = Command::new(&program);
        cmd.args(["-accel", accel, "-machine", "q35", "-m", "64M", "-S"]);
        cmd.args(common_args(&dir.qmp()));
        match Running::start("QEMU probe", cmd, dir, Duration::from_secs(30)) {
            Ok((running, _)) => {
                let (major, minor, micro) = running.qmp.greeting().version;
                running.quit()?;
                return Ok(QemuInfo {
                    program,
                    accel,
                    version: format!("{major}.{minor}.{micro}"),
                });
            }
            Err(e) => last_error = format!("-accel {accel}: {e}"),
        }
    }
    Err(format!("QEMU starts with no accelerator: {last_error}"))
}

/// QEMU's arguments common to every start here: no devices, no display,
/// the bench's QMP monitor at `qmp`.
pub fn common_args(qmp: &Path) -> Vec<String> {
    [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-qmp",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([format!("unix:{},server=on,wait=off", qmp.display())])
    .collect()
}

/// A q35 QEMU whose `size` bytes of RAM are a memfd backend populated as
/// `prealloc` says; `-S` if `paused`.
///
/// # Errors
/// As [`Running::start`].
pub fn start_memfd(
    size: u64,
    prealloc: Prealloc,
    paused: bool,
) -> Result<(Running, Duration), String> {
    let info = info()?;
    let dir = Scratch::new()?;
    let mut cmd = Command::new(&info.program);
    cmd.args(["-accel", info.accel, "-machine", "q35,memory-backend=ram"])
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=ram,size={size}{}",
            prealloc.options()
        ))
        .args(["-m", &format!("{}M", size >> 20)])
        .args(common_args(&dir.qmp()));
    if paused {
        cmd.arg("-S");
    }
    Running::start(
        &format!("QEMU {}", prealloc.label()),
        cmd,
        dir,
        qmp_timeout(size),
    )
}

/// Bound on a start that populates `size` bytes: far above the slowest
/// seen (about 1 s per GiB), so only a hang reaches it.
pub fn qmp_timeout(size: u64) -> Duration {
    Duration::from_secs(30 + 10 * (size >> 30))
}

/// A temporary directory for a QEMU's QMP socket and log.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new directory.
    ///
    /// # Errors
    /// Creating it.
    pub fn new() -> Result<Scratch, String> {
        let dir = tempfile::Builder::new()
            .prefix("gmem-bench-qemu")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        Ok(Scratch { dir })
    }

    /// The QMP socket's path.
    pub fn qmp(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// Where the process's output goes.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }
}

/// A started QEMU (or a launcher running one) with the bench's QMP session.
#[derive(Debug)]
pub struct Running {
    /// The session on the monitor.
    pub qmp: QmpClient,
    started: Instant,
    guard: ChildGuard,
    what: String,
    /// Holds the socket and log until the process is gone.
    _dir: Scratch,
}

impl Running {
    /// Spawns `cmd` (which gives QEMU a monitor at `dir.qmp()`), its output
    /// in `dir.log()`, and waits until that monitor answers; returns the
    /// time from the spawn until then.
    ///
    /// # Errors
    /// The process exited first (its output in the message) or the monitor
    /// did not answer within `timeout`.
    pub fn start(
        what: &str,
        mut cmd: Command,
        dir: Scratch,
        timeout: Duration,
    ) -> Result<(Running, Duration), String> {
        let log = std::fs::File::create(dir.log()).map_err(|e| format!("log file: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("dup: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let started = Instant::now();
        let mut guard = spawn(what, cmd)?;
        let deadline = started + timeout;
        let failed = |why: String, dir: &Scratch| {
            let out = std::fs::read_to_string(dir.log()).unwrap_or_default();
            format!("{what}: {why}: {}", out.trim())
        };
        // The socket appears early; QmpClient::connect then waits for the
        // greeting, and fails at once if the process exits meanwhile.
        while !dir.qmp().exists() {
            if let Ok(Some(status)) = guard.child().try_wait() {
                return Err(failed(format!("exited with {status}"), &dir));
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("no monitor within {timeout:?}"), &dir));
            }
            std::thread::sleep(POLL);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let qmp = QmpClient::connect(dir.qmp(), left.max(Duration::from_secs(1)))
            .map_err(|e| failed(format!("QMP: {}", crate::daemon::chain(&e)), &dir))?;
        let to_qmp = started.elapsed();
        Ok((
            Running {
                qmp,
                started,
                guard,
                what: what.to_owned(),
                _dir: dir,
            },
            to_qmp,
        ))
    }

    /// When the process was spawned.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Polls `query-status` until the guest runs (bounded by 30 s).
    ///
    /// # Errors
    /// A QMP error or another status until the deadline.
    pub fn wait_running(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self
                .qmp
                .query_status()
                .map_err(|e| format!("query-status: {}", crate::daemon::chain(&e)))?;
            if status == "running" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: still {status:?} after 30 s", self.what));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Asks QEMU to quit and waits (up to 30 s) for the spawned process to
    /// exit; its memory is freed then.
    ///
    /// # Errors
    /// It did not exit in time (the guard kills it).
    pub fn quit(mut self) -> Result<(), String> {
        // QEMU may close the monitor before it answers `quit`.
        let _ = self.qmp.quit();
        wait_all(
            std::slice::from_mut(&mut self.guard),
            Duration::from_secs(30),
        )
        .map(|_| ())
        .map_err(|e| format!("{} after quit: {e}", self.what))
    }
}
