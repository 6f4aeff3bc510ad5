//! A real systemd user instance for tests of units, `Type=notify`, the fd
//! store and the watchdog.
//!
//! systemd 252 is installed here but is not PID 1, so the instance runs as
//! root in a private mount namespace whose `/run/systemd` is a fresh tmpfs
//! (it wants `/run/systemd/system` to exist), with `XDG_RUNTIME_DIR` a
//! temporary directory under `/run` (not `/tmp`: units with `PrivateTmp=`
//! must still reach its notify socket). Units go in `DIR/systemd/user/`;
//! `%t` in them is `DIR`. `systemctl --user` only works from inside the
//! namespace, so it runs under `nsenter -t PID -m`. Services' output has
//! no journal to go to: give them `StandardOutput=append:FILE`.
//!
//! Each instance gets a cgroup of its own (`gmem-systemd-XXXX` at the root
//! of the `name=systemd` and the cgroup2 hierarchy), so its units' cgroups
//! (`…/app.slice/NAME.service`) are its own: instances started from the
//! same cgroup would share them, and one instance stopping or restarting a
//! unit would kill another's processes of the same unit name (with
//! `KillMode=control-group`) and wait for them to go. Where no cgroup can be
//! made the instance runs where the test runs.
//!
//! A binary a unit runs must not live under `/tmp` or `/var/tmp` either
//! (`PrivateTmp=` hides it: status 226/NAMESPACE or 203/EXEC): the
//! workspace's `target/` is fine, and [`UserSystemd::install_gmemd_units`]
//! copies a binary from there into the instance's directory.
//!
//! Every wait is bounded. Dropping the instance stops it (SIGTERM, which
//! stops its units, SIGKILL after a grace) and kills any main process seen
//! that is still in its mount namespace.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::{wait_until, ChildGuard};

/// The systemd binary run as the user instance.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// How long a `systemctl` call may take.
const SYSTEMCTL_TIMEOUT: &str = "30";

/// The options of `gmemd.service` a user instance here cannot set up:
/// each makes systemd build the unit's root under
/// `/run/systemd/unit-root`, which fails in this namespace ("Failed to set
/// up mount namespacing: /run/systemd/unit-root/home: No such file or
/// directory", status 226/NAMESPACE). Everything else is tested as shipped.
pub const SANDBOX_DROP_IN: &str = "[Service]\n\
    ProtectHome=no\n\
    ProtectKernelTunables=no\n\
    ProtectKernelLogs=no\n\
    ProtectControlGroups=no\n";

/// A running `systemd --user` in its own mount namespace.
#[derive(Debug)]
pub struct UserSystemd {
    manager: ChildGuard,
    pid: u32,
    /// `readlink /proc/PID/ns/mnt` of the manager.
    mount_ns: PathBuf,
    /// Main pids seen, killed on drop if still in the namespace.
    seen: RefCell<Vec<u32>>,
    /// The name of the instance's own cgroup in each hierarchy (see the
    /// module doc), removed on drop.
    cgroup_name: String,
    // Last: removed after the manager is gone.
    dir: tempfile::TempDir,
}

impl UserSystemd {
    /// Starts an instance, or returns `None` (a skip) where none can run:
    /// not root, systemd or util-linux missing, or no private mount
    /// namespace allowed. Under `GMEM_E2E=require` that is a failure instead.
    ///
    /// # Panics
    /// If the instance starts but does not come up within 30 s.
    pub fn start() -> Option<UserSystemd> {
        let missing = [
            "/usr/bin/unshare",
            "/usr/bin/nsenter",
            "/usr/bin/systemctl",
            SYSTEMD,
        ]
        .into_iter()
        .find(|p| !Path::new(p).exists());
        let root = rustix::process::geteuid().is_root();
        if !root || missing.is_some() {
            let what = format!(
                "a systemd user instance (root: {root}, missing: {})",
                missing.unwrap_or("nothing")
            );
            assert!(
                !crate::e2e::required(),
                "{what} is required (GMEM_E2E=require) but not available"
            );
            eprintln!("SKIPPED: {what} (set GMEM_E2E=require to make this a failure)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("gmem-systemd-")
            .tempdir_in("/run")
            .expect("temp dir under /run");
        std::fs::create_dir_all(dir.path().join("systemd/user")).expect("unit dir");
        let log = std::fs::File::create(dir.path().join("manager.log")).expect("manager log");
        let cgroup_name = dir
            .path()
            .file_name()
            .expect("temp dir name")
            .to_string_lossy()
            .into_owned();
        let cgroups = make_cgroups(&cgroup_name);
        // The shell moves itself (and so the manager it becomes) into them.
        let enter: String = cgroups
            .iter()
            .map(|cg| format!("echo $$ > {}/cgroup.procs && ", cg.display()))
            .collect();
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["-m", "--propagation", "private", "/bin/sh", "-c"])
            .arg(format!(
                "{enter}mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && \
                 exec {SYSTEMD} --user --log-target=console"
            ))
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let manager = ChildGuard::spawn("systemd --user", cmd);
        let pid = manager.pid();
        let mut instance = UserSystemd {
            manager,
            pid,
            mount_ns: PathBuf::new(),
            seen: RefCell::new(Vec::new()),
            cgroup_name,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if instance.manager.child().try_wait().ok().flatten().is_some() {
                let log = instance.manager_log();
                assert!(
                    !crate::e2e::required(),
                    "systemd --user exited at start (GMEM_E2E=require):\n{log}"
                );
                eprintln!("SKIPPED: systemd --user could not start here:\n{log}");
                return None;
            }
            let state = instance.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout);
            if matches!(state.trim(), "running" | "degraded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd --user did not come up in 30 s (state {state:?}):\n{}",
                instance.manager_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        instance.mount_ns =
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("manager's mount namespace");
        Some(instance)
    }

    /// The runtime directory (`XDG_RUNTIME_DIR`, `%t` in units).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The manager's pid (for `nsenter -t`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where unit files go.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir().join("systemd/user")
    }

    /// What the manager logged.
    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("manager.log")).unwrap_or_default()
    }

    /// Writes the unit file `name` and reloads the manager.
    pub fn install(&self, name: &str, text: &str) {
        std::fs::write(self.unit_dir().join(name), text).expect("writing a unit");
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// Runs `systemctl --user ARGS` in the instance's namespace (30 s at most).
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.in_namespace("systemctl", &[&["--user"], args].concat())
    }

    /// Runs `program ARGS` in the instance's mount namespace with its
    /// `XDG_RUNTIME_DIR` (30 s at most, then killed).
    pub fn in_namespace(&self, program: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["--kill-after=5", SYSTEMCTL_TIMEOUT, "nsenter", "-t"])
            .arg(self.pid.to_string())
            .args(["-m", program])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir())
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// `systemctl --user ARGS`, which must succeed; returns its stdout.
    ///
    /// # Panics
    /// If it fails, with its output and the manager's log.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl --user {args:?}: {}\n{}{}\nmanager log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.manager_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs the shipped `gmemd.service` and `gmemd.socket`
    /// (`backend/gmemd/systemd/`) as they are, but for `ExecStart=`, which
    /// becomes `exec_start`, output appended to `DIR/gmemd.out`, no core
    /// dumps, and [`SANDBOX_DROP_IN`] as `gmemd.service.d/sandbox.conf`.
    pub fn install_gmemd_units(&self, exec_start: &str) {
        let exec_start = self.outside_private_tmp(exec_start);
        let units = crate::workspace_path("backend/gmemd/systemd");
        let service = std::fs::read_to_string(units.join("gmemd.service")).expect("gmemd.service");
        let exec = service
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart= in gmemd.service");
        let out = self.dir().join("gmemd.out");
        let service = service.replace(
            exec,
            &format!(
                "ExecStart={exec_start}\nStandardOutput=append:{out}\n\
                 StandardError=append:{out}\nLimitCORE=0",
                out = out.display()
            ),
        );
        let drop_in = self.unit_dir().join("gmemd.service.d");
        std::fs::create_dir_all(&drop_in).expect("drop-in dir");
        std::fs::write(drop_in.join("sandbox.conf"), SANDBOX_DROP_IN).expect("drop-in");
        let socket = std::fs::read_to_string(units.join("gmemd.socket")).expect("gmemd.socket");
        std::fs::write(self.unit_dir().join("gmemd.socket"), socket).expect("writing a unit");
        self.install("gmemd.service", &service);
    }

    /// `command_line` with its binary copied into this instance's directory
    /// (under `/run`) if it lives under `/tmp` or `/var/tmp`, which
    /// `PrivateTmp=` hides from the unit (a checkout under `/tmp` builds
    /// its binaries there).
    fn outside_private_tmp(&self, command_line: &str) -> String {
        let (binary, args) = command_line
            .split_once(' ')
            .map_or((command_line, None), |(b, a)| (b, Some(a)));
        let hidden = ["/tmp/", "/var/tmp/"].iter().any(|t| binary.starts_with(t));
        if !hidden {
            return command_line.to_owned();
        }
        let bin_dir = self.dir().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        let name = Path::new(binary).file_name().expect("a binary's name");
        let copy = bin_dir.join(name);
        std::fs::copy(binary, &copy)
            .unwrap_or_else(|e| panic!("copying {binary} out of PrivateTmp's way: {e}"));
        match args {
            Some(args) => format!("{} {args}", copy.display()),
            None => copy.display().to_string(),
        }
    }

    /// Starts `unit` without waiting for it (`--no-block`).
    pub fn start_unit(&self, unit: &str) {
        self.systemctl_ok(&["start", "--no-block", unit]);
    }

    /// Stops `unit` and waits for the stop (bounded by the call's timeout).
    pub fn stop_unit(&self, unit: &str) {
        self.systemctl_ok(&["stop", unit]);
    }

    /// The value of `property` of `unit`.
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl_ok(&["show", "--value", "-p", property, unit])
            .trim()
            .to_owned()
    }

    /// The unit's main pid, if it has one.
    pub fn main_pid(&self, unit: &str) -> Option<u32> {
        let pid = self
            .show(unit, "MainPID")
            .parse::<u32>()
            .ok()
            .filter(|p| *p != 0);
        if let Some(pid) = pid {
            let mut seen = self.seen.borrow_mut();
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        pid
    }

    /// Waits until `unit` is active and running with a main pid other than
    /// `not` (the one just killed, say); returns that pid.
    pub fn wait_running(&self, unit: &str, not: Option<u32>, timeout: Duration) -> u32 {
        wait_until(timeout, &format!("{unit} to run (not as {not:?})"), || {
            let state = self.show(unit, "SubState");
            if state != "running" {
                return None;
            }
            self.main_pid(unit).filter(|pid| Some(*pid) != not)
        })
    }

    /// Sends `signal` to `pid` (this process shares the pid namespace).
    pub fn kill(&self, pid: u32, signal: rustix::process::Signal) {
        let pid =
            rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("nonzero pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Whether `pid` is a live process in the instance's mount namespace.
    fn ours(&self, pid: u32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns == self.mount_ns)
    }
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("systemd --user log:\n{}", self.manager_log());
        }
        // SIGTERM: the user manager stops its units and exits.
        self.manager.stop();
        for pid in self.seen.borrow().iter().copied() {
            if self.ours(pid) {
                self.kill(pid, rustix::process::Signal::KILL);
            }
        }
        remove_cgroups(&self.cgroup_name);
    }
}

/// Mount points of the cgroup hierarchies: (`cgroup2` or the v1
/// controllers, mount point), from `/proc/self/mountinfo`.
fn cgroup_mounts() -> Vec<(String, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            let mut after = after.split_whitespace();
            let (fstype, options) = (after.next()?, after.nth(1).unwrap_or(""));
            let what = match fstype {
                "cgroup2" => "cgroup2".to_owned(),
                "cgroup" => options.to_owned(),
                _ => return None,
            };
            Some((what, PathBuf::from(mount_point)))
        })
        .collect()
}

/// Makes the cgroup `name` at the root of the hierarchies systemd tracks
/// processes in (`name=systemd` and cgroup2) and returns them; none where
/// that is not possible.
fn make_cgroups(name: &str) -> Vec<PathBuf> {
    let made: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .filter(|(what, _)| what == "cgroup2" || what.split(',').any(|o| o == "name=systemd"))
        .map(|(_, mount_point)| mount_point.join(name))
        .filter(|cg| std::fs::create_dir(cg).is_ok())
        .collect();
    if made.is_empty() {
        eprintln!(
            "note: no cgroup of its own for systemd --user: instances running at once share \
             their units' cgroups"
        );
    }
    made
}

/// Removes the cgroup `name` with everything systemd made in it, in every
/// hierarchy (it makes them in the v1 controllers too). Any process still
/// in one (a unit's process the manager left) is killed first.
fn remove_cgroups(name: &str) {
    let roots: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .map(|(_, mount_point)| mount_point.join(name))
        .filter(|cg| cg.is_dir())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for root in &roots {
        while remove_cgroup_tree(root) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills what is left in the cgroup tree at `dir` and removes it, leaves
/// first. Returns whether something is still there (a process dying).
fn remove_cgroup_tree(dir: &Path) -> bool {
    let mut left = false;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                left |= remove_cgroup_tree(&entry.path());
            }
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    left | std::fs::remove_dir(dir).is_err()
}
