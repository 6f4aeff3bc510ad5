//! The keeper: gmemd's own fd store, for when no service manager runs it.
//!
//! Started without `NOTIFY_SOCKET`, gmemd becomes a small parent that only
//! holds fds and restarts the serving gmemd, the way systemd runs
//! `gmemd.service` (`Type=notify`, `Restart=always`, `WatchdogSec=`,
//! `FileDescriptorStoreMax=`):
//! - it binds a notify socket (an abstract name, accepting messages from its
//!   child's pid only, checked by the kernel's `SCM_CREDENTIALS`) and starts
//!   the serving process, the same binary with [`SERVE_FLAG`], with
//!   `NOTIFY_SOCKET`, `FDSTORE` (its capacity), `WATCHDOG_USEC` and
//!   `GMEMD_RESTARTS` set;
//! - it keeps the fds sent with `FDSTORE=1` by `FDNAME` (storing a name again
//!   replaces its fds), drops them on `FDSTOREREMOVE=1`, notes `READY=1`,
//!   `STATUS=`, `WATCHDOG=1`;
//! - when the serving process dies, by any signal or exit, it reads the
//!   messages the process sent before dying, then starts it again with
//!   every stored fd at 3, 4, … (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`),
//!   at once after a long run, later and later (up to a limit, never giving
//!   up) when it dies in a loop;
//! - a process that stops pinging the watchdog (after `READY=1`), or is not
//!   ready within the start timeout, gets `SIGABRT`, then `SIGKILL` after a
//!   grace, and is restarted;
//! - `SIGTERM`/`SIGINT` are forwarded, and the keeper exits once the serving
//!   process has: the stored memory is then gone, as with `systemctl stop`.
//!   `SIGHUP` is forwarded (gmemd's restart by exec).
//!
//! The keeper never reads client data: it holds fds and parses `KEY=VALUE`
//! lines from its own child, so it is small and unlikely to crash. If it is
//! killed all the same, the serving process goes on serving, unsupervised,
//! and its stores fail from then on.

mod host;
mod spawn;
mod store;
mod supervise;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The internal flag that makes gmemd serve instead of starting a keeper.
pub const SERVE_FLAG: &str = "--serve";

/// The serving process to start: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeCommand {
    /// The program (an absolute path: it is exec'd as is, without `PATH`).
    pub program: PathBuf,
    /// Its arguments, `argv[1..]`.
    pub args: Vec<OsString>,
}

impl ServeCommand {
    /// `program` with `args`.
    pub fn new<A: Into<OsString>>(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = A>,
    ) -> Self {
        ServeCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// This binary (its path now, so a restart after an upgrade in place
    /// runs the new one) with `args` and [`SERVE_FLAG`].
    ///
    /// # Errors
    /// When the path of the running binary cannot be read.
    pub fn this_binary<A: Into<OsString>>(args: impl IntoIterator<Item = A>) -> io::Result<Self> {
        let mut serve = Self::new(std::env::current_exe()?, args);
        serve.args.push(SERVE_FLAG.into());
        Ok(serve)
    }
}

/// How the keeper supervises; [`Default`] mirrors `gmemd.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperOptions {
    /// Pings must come this often once the serving process is ready
    /// (`WatchdogSec=`); `None` for no watchdog.
    pub watchdog: Option<Duration>,
    /// The most fds kept (`FileDescriptorStoreMax=`); told to the serving
    /// process as `FDSTORE`.
    pub max_fds: usize,
    /// From `SIGABRT` (watchdog, start timeout) to `SIGKILL` (`TimeoutAbortSec=`).
    pub abort_grace: Duration,
    /// From a forwarded `SIGTERM`/`SIGINT` to `SIGKILL` (`TimeoutStopSec=`).
    pub stop_timeout: Duration,
    /// `READY=1` must come this soon after a start (`TimeoutStartSec=`).
    pub start_timeout: Option<Duration>,
    /// The delay after the first of a run of quick deaths (`RestartSec=`),
    /// doubled for each further one.
    pub restart_delay: Duration,
    /// The longest delay between restarts.
    pub max_restart_delay: Duration,
    /// A process that ran this long did not die "in a loop": the next
    /// restart is immediate.
    pub stable_after: Duration,
    /// Exit with the serving process's status if its very first run ends
    /// before `READY=1` with nothing stored (a bad configuration, say):
    /// there is nothing to keep, and restarting cannot help.
    pub exit_if_first_start_fails: bool,
}

impl Default for KeeperOptions {
    fn default() -> Self {
        KeeperOptions {
            watchdog: Some(Duration::from_secs(10)),
            max_fds: 16_384,
            abort_grace: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(30),
            start_timeout: Some(Duration::from_secs(90)),
            restart_delay: Duration::from_millis(100),
            max_restart_delay: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            exit_if_first_start_fails: true,
        }
    }
}

/// What stops the keeper from starting. Once it runs, nothing does: it
/// logs what fails and goes on holding the fds.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The notify socket cannot be made.
    #[error("cannot make the keeper's notify socket")]
    Socket(#[source] io::Error),
    /// Signals cannot be blocked and read.
    #[error("cannot read SIGTERM, SIGINT and SIGHUP from a signalfd")]
    Signals(#[source] io::Error),
}

/// Runs the keeper until it is told to stop (`SIGTERM`, `SIGINT`) and the
/// serving process has exited; returns that process's exit status. Call it
/// early in `main`, before other threads start.
pub fn run_keeper(serve: ServeCommand, options: KeeperOptions) -> ExitCode {
    match supervise::Keeper::new(serve, options) {
        Ok(mut keeper) => keeper.run(),
        Err(e) => {
            log::error!("keeper: {}", crate::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_command_appends_the_flag() {
        let serve = ServeCommand::this_binary(["--socket", "/x"]).unwrap();
        assert!(serve.program.is_absolute());
        assert_eq!(serve.args, ["--socket", "/x", SERVE_FLAG]);
    }
}
