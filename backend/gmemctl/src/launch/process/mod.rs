//! Handles on processes that are not (or no longer) our children: a pid
//! plus its start time, so a recycled pid is never mistaken for the QEMU or
//! launcher it once was, and a pidfd to signal it, wait for it and take fds
//! from it (`pidfd_getfd`).
//!
//! Taking an fd from another process needs ptrace permission over it
//! (`PTRACE_MODE_ATTACH_REALCREDS`): root, or the same uid with Yama's
//! `ptrace_scope` at 0.

pub mod exit;
pub mod spawn;

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{
    pidfd_getfd, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, PidfdGetfdFlags, Signal,
};
use serde::{Deserialize, Serialize};

/// Errors of process handles.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process has exited (or its pid now names another process).
    #[error("process {pid} is gone")]
    Gone {
        /// The pid.
        pid: u32,
    },
    /// `pidfd_open` failed for another reason.
    #[error("pidfd_open({pid}) failed")]
    Open {
        /// The pid.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `pidfd_getfd` failed.
    #[error(
        "cannot take fd {fd} from process {pid} (pidfd_getfd needs ptrace permission: \
         run as root or as QEMU's uid with kernel.yama.ptrace_scope=0)"
    )]
    TakeFd {
        /// The pid.
        pid: u32,
        /// The fd number in that process.
        fd: RawFd,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("cannot send {signal:?} to process {pid}")]
    Signal {
        /// The pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Polling the pidfd failed.
    #[error("waiting for process {pid} failed")]
    Wait {
        /// The pid.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A process identity that survives pid reuse: pid + start time (clock
/// ticks after boot, field 22 of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of a running process (`None` if it is gone).
    pub fn of(pid: u32) -> Option<Self> {
        Some(ProcessId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id()).expect("/proc/self/stat is readable")
    }
}

/// Field 22 (`starttime`) of `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<u64> {
    stat_field(&read_stat(pid)?, 22)?.parse().ok()
}

fn read_stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Field `field` (1-based, as in proc(5)) of a `/proc/PID/stat` text, for
/// fields after the command name.
fn stat_field(stat: &str, field: usize) -> Option<&str> {
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state).
    rest.split_whitespace().nth(field.checked_sub(3)?)
}

/// A process's session and process group, as this pid namespace sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobControl {
    /// Process group id (field 5 of `/proc/PID/stat`); 0 when its leader
    /// lives outside this pid namespace.
    pub group: i32,
    /// Session id (field 6); 0 when its leader lives outside this pid
    /// namespace, as in a container started inside another session.
    pub session: i32,
}

impl JobControl {
    /// Read from `/proc` rather than `getsid`/`getpgid`: those return 0 for
    /// a leader outside our pid namespace, which rustix's `Pid` cannot hold
    /// (it panics in debug builds).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = read_stat(pid)?;
        Some(JobControl {
            group: stat_field(&stat, 5)?.parse().ok()?,
            session: stat_field(&stat, 6)?.parse().ok()?,
        })
    }

    /// The process group a process spawned by us may join to sit beside
    /// `self`'s process: its group if it is in our session and visible to
    /// us, else `None` (a group can only be joined within one's session).
    pub fn joinable_group(self, ours: JobControl) -> Option<i32> {
        (self.session != 0 && self.session == ours.session && self.group != 0).then_some(self.group)
    }
}

/// A pidfd on a process whose identity was checked when it was opened.
#[derive(Debug)]
pub struct Process {
    id: ProcessId,
    pidfd: OwnedFd,
}

impl Process {
    /// Opens a handle if the process with that identity still runs.
    ///
    /// # Errors
    /// [`ProcessError::Gone`] when it exited or its pid was reused.
    pub fn open(id: ProcessId) -> Result<Self, ProcessError> {
        let gone = || ProcessError::Gone { pid: id.pid };
        let raw = i32::try_from(id.pid).ok().and_then(Pid::from_raw);
        let pidfd = match pidfd_open(raw.ok_or_else(gone)?, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Err(gone()),
            Err(e) => {
                return Err(ProcessError::Open {
                    pid: id.pid,
                    source: e.into(),
                })
            }
        };
        // Checked after opening: the pidfd now pins this very process, so
        // a matching start time proves it is the one recorded.
        if start_time(id.pid) != Some(id.start_time) {
            return Err(gone());
        }
        let process = Process { id, pidfd };
        if !process.is_alive() {
            return Err(gone());
        }
        Ok(process)
    }

    /// A handle on a child just spawned (not reaped yet, so its pid cannot
    /// have been reused).
    ///
    /// # Errors
    /// As [`Process::open`].
    pub fn of_child(child: &std::process::Child) -> Result<Self, ProcessError> {
        let pid = child.id();
        let id = ProcessId::of(pid).ok_or(ProcessError::Gone { pid })?;
        Self::open(id)
    }

    /// Its identity.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// The pidfd (readable once the process has exited).
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Whether it still runs (a zombie counts as exited).
    pub fn is_alive(&self) -> bool {
        !self.wait_exit(Duration::ZERO).unwrap_or(false)
    }

    /// Waits up to `timeout` for it to exit; `true` if it did.
    ///
    /// # Errors
    /// [`ProcessError::Wait`].
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::INTR) if Instant::now() < deadline => continue,
                Err(Errno::INTR) => return Ok(false),
                Err(e) => {
                    return Err(ProcessError::Wait {
                        pid: self.id.pid,
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Sends `signal` (through the pidfd: never to a recycled pid).
    ///
    /// # Errors
    /// [`ProcessError::Signal`]; a process that already exited is not an error.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        match pidfd_send_signal(&self.pidfd, signal) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(ProcessError::Signal {
                pid: self.id.pid,
                signal,
                source: e.into(),
            }),
        }
    }

    /// SIGKILL, then waits (bounded) for the exit.
    pub fn kill(&self) {
        if let Err(e) = self.signal(Signal::KILL) {
            log::warn!("{e}");
        }
        let _ = self.wait_exit(Duration::from_secs(5));
    }

    /// A duplicate of the process's fd `fd`, close-on-exec in this process.
    ///
    /// # Errors
    /// [`ProcessError::TakeFd`].
    pub fn take_fd(&self, fd: RawFd) -> Result<OwnedFd, ProcessError> {
        pidfd_getfd(self.pidfd.as_fd(), fd, PidfdGetfdFlags::empty()).map_err(|e| {
            ProcessError::TakeFd {
                pid: self.id.pid,
                fd,
                source: e.into(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_parentheses() {
        let stat = "42 (qemu (x) 1) S 7 40 30 0 -1";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 5), Some("40"));
        assert_eq!(stat_field(stat, 6), Some("30"));
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field(stat, 22), None);
    }

    #[test]
    fn job_control_of_ourselves_and_a_child() {
        let ours = JobControl::of(std::process::id()).unwrap();
        let mut child = Command::new("sleep")
            .arg("10")
            .process_group(0)
            .spawn()
            .unwrap();
        let theirs = JobControl::of(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(theirs.group, i32::try_from(child.id()).unwrap());
        assert_eq!(theirs.session, ours.session);
        if ours.session != 0 {
            assert_eq!(theirs.joinable_group(ours), Some(theirs.group));
        }
        let outside = JobControl {
            group: 0,
            session: 0,
        };
        assert_eq!(outside.joinable_group(outside), None);
        let other_session = JobControl {
            group: 7,
            session: ours.session + 1,
        };
        assert_eq!(other_session.joinable_group(ours), None);
    }

    #[test]
    fn identity_and_liveness() {
        let me = ProcessId::current();
        assert_eq!(me.pid, std::process::id());
        let p = Process::open(me).unwrap();
        assert!(p.is_alive());
        // A start time that does not match is another process.
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(matches!(
            Process::open(other),
            Err(ProcessError::Gone { .. })
        ));
        assert!(ProcessId::of(u32::MAX).is_none());
    }

    #[test]
    fn signal_wait_and_take_fd() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let p = Process::of_child(&child).unwrap();
        assert!(!p.wait_exit(Duration::from_millis(20)).unwrap());
        // Its stdin is the read end of our pipe.
        let theirs = p.take_fd(0).unwrap();
        let ours = child.stdin.as_ref().unwrap();
        let a = rustix::fs::fstat(&theirs).unwrap();
        let b = rustix::fs::fstat(ours).unwrap();
        assert_eq!(a.st_ino, b.st_ino);
        assert!(matches!(
            p.take_fd(ours.as_raw_fd() + 100),
            Err(ProcessError::TakeFd { .. })
        ));
        p.signal(Signal::TERM).unwrap();
        assert!(p.wait_exit(Duration::from_secs(5)).unwrap());
        // Exited but not reaped: a zombie is not alive, and signalling it is fine.
        assert!(!p.is_alive());
        p.signal(Signal::TERM).unwrap();
        child.wait().unwrap();
        assert!(matches!(
            Process::open(p.id()),
            Err(ProcessError::Gone { .. })
        ));
    }
}
