//! A real `gmemd` on a temp socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gmem_protocol::wire::VmId;
use gmem_protocol::Client;

use crate::process::{wait_until, ChildGuard};

/// Pass this among the arguments of [`Daemon::start_with`] to run gmemd
/// with its keeper (as the README's command does) instead of `--no-keeper`.
pub const KEEPER: &str = "--with-keeper";

/// A running gmemd, stopped (and its log printed, if the test failed) on drop.
#[derive(Debug)]
pub struct Daemon {
    dir: tempfile::TempDir,
    guard: ChildGuard,
}

impl Daemon {
    /// Starts gmemd with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts gmemd with extra arguments and waits until it serves.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gmemd-test")
            .tempdir()
            .expect("temp dir");
        // Tests connect as other uids too (peer checks); let them reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let log = std::fs::File::create(dir.path().join("gmemd.log")).expect("log file");
        let mut cmd = Command::new(crate::bin("gmemd"));
        cmd.arg("--state-dir")
            .arg(dir.path())
            .arg("--socket")
            .arg(dir.path().join("gmemd.sock"));
        // The tests look at the serving process itself (its fds, its
        // pid); the ones about surviving gmemd's crash use the keeper.
        if !args.contains(&KEEPER) {
            cmd.arg("--no-keeper");
        }
        cmd.args(args.iter().filter(|a| **a != KEEPER))
            // Tests want every decision in the log; benchmarks measure the
            // daemon as shipped (info) by setting GMEMD_TEST_LOG.
            .env(
                "RUST_LOG",
                std::env::var("GMEMD_TEST_LOG").unwrap_or_else(|_| "debug".to_owned()),
            )
            .env_remove("GMEMD_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let guard = ChildGuard::spawn("gmemd", cmd);
        let daemon = Daemon { dir, guard };
        let socket = daemon.socket();
        wait_until(Duration::from_secs(10), "gmemd to listen", || {
            Client::connect_control(&socket).ok()
        });
        daemon
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("gmemd.sock")
    }

    /// The temp directory holding socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// gmemd's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// A control session (as gmemctl uses).
    pub fn control(&self) -> Client {
        let client = Client::connect_control(self.socket()).expect("control session");
        client
            .set_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        client
    }

    /// A VM lease.
    pub fn lease(&self, vm: VmId) -> Client {
        let client = Client::connect(self.socket(), vm).expect("lease");
        client
            .set_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        client
    }

    /// The pid of the process that serves: gmemd itself, or with
    /// [`KEEPER`] the keeper's child (waits up to 10 s for one).
    pub fn serving_pid(&self) -> u32 {
        let keeper = self.pid();
        wait_until(Duration::from_secs(10), "gmemd's serving process", || {
            let children =
                std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).ok()?;
            match children.split_whitespace().next() {
                Some(child) => child.parse().ok(),
                None => None,
            }
        })
    }

    /// Number of fds gmemd has open.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("gmemd's /proc fd dir")
            .count()
    }

    /// Targets of gmemd's open fds (`readlink /proc/PID/fd/*`).
    pub fn fd_targets(&self) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("gmemd's /proc fd dir")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// gmemd's open fds as (`/proc/PID/fd/N` path, link target).
    pub fn fd_targets_with_paths(&self) -> Vec<(PathBuf, String)> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("gmemd's /proc fd dir")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let target = std::fs::read_link(&path).ok()?;
                Some((path, target.to_string_lossy().into_owned()))
            })
            .collect()
    }

    /// Starts `gmem-test-client` (a VMM stand-in) as VM `vm_name` with
    /// `args` and waits until it has done them (`READY`).
    pub fn spawn_client(&self, vm_name: &str, args: &[&str]) -> ChildGuard {
        let mut child =
            ChildGuard::spawn_piped("gmem-test-client", self.client_command(vm_name, args));
        child.wait_for_output("READY", Duration::from_secs(10));
        child
    }

    /// The `gmem-test-client` command for VM `vm_name` with `args`.
    pub fn client_command(&self, vm_name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::bin("gmem-test-client"));
        cmd.arg("--socket")
            .arg(self.socket())
            .args(["--vm", vm_name])
            .args(args);
        cmd
    }

    /// Whether gmemd still runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.child().try_wait().expect("try_wait").is_none()
    }

    /// Waits (up to 10 s) until no lease is open.
    pub fn wait_no_leases(&self) {
        let mut ctl = self.control();
        wait_until(Duration::from_secs(10), "the leases to end", || {
            ctl.leases().expect("LEASES").is_empty().then_some(())
        });
    }

    /// The daemon's log, with the lines of everything it answered before
    /// this call. gmemd writes a wakeup's log lines just after its replies
    /// (`log_sink`), so a HELLO round trip, served in a later wakeup, is
    /// the barrier; a gmemd that does not answer within 2 s is read as is.
    pub fn log(&self) -> String {
        if let Ok(stream) = std::os::unix::net::UnixStream::connect(self.socket()) {
            if stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .is_ok()
            {
                let _ = Client::handshake(stream, None);
            }
        }
        self.log_now()
    }

    /// The log file as it is now, without the barrier of [`Daemon::log`]
    /// (for a gmemd that is stopped, or must not see another connection).
    pub fn log_now(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gmemd.log")).unwrap_or_default()
    }

    /// A `gmemctl` command aimed at this daemon.
    pub fn gmemctl(&self) -> Command {
        let mut cmd = Command::new(crate::bin("gmemctl"));
        cmd.env("GMEMD_SOCKET", self.socket());
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.guard.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- gmemd log ({}) -----\n{}",
                self.dir.path().display(),
                self.log_now()
            );
        }
    }
}
