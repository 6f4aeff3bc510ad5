//! Child processes that are always killed and reaped, and bounded waits.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, waitid, Pid, Signal, WaitId, WaitIdOptions};

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child in its own process group: dropping the guard kills the group
/// (SIGTERM, then SIGKILL after 5 s) and reaps the child.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group.
    ///
    /// # Panics
    /// If the spawn fails.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        ChildGuard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Spawns with stdout piped (to read lines such as `READY`).
    pub fn spawn_piped(name: &str, mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped());
        Self::spawn(name, cmd)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The child itself.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Reads stdout until `needle` appears (stdout must be piped); returns
    /// everything read. Bounded by `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> String {
        let name = self.name.clone();
        let stdout = self.child().stdout.as_mut().expect("stdout piped");
        let fd = std::os::fd::AsFd::as_fd(stdout);
        rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK).expect("nonblocking stdout");
        let mut text = String::new();
        wait_until(timeout, &format!("{name} to print {needle:?}"), || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(_) => break,
                }
            }
            text.contains(needle).then_some(())
        });
        text
    }

    /// Sends SIGKILL to the child (not its group) and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let _ = child.kill();
        child.wait().expect("reap")
    }

    /// Waits for the child to exit, up to `timeout`, and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        let child = self.child.as_mut().expect("running");
        wait_until(timeout, &format!("{name} to exit"), || {
            child.try_wait().expect("try_wait")
        })
    }

    /// Stops the process group: SIGTERM, SIGKILL after 5 s, then reap.
    ///
    /// The group is signalled only while its leader is alive or a zombie:
    /// once the leader is reaped its pid, and so the group id, may belong to
    /// a new process group (pids wrap at 32768 here), which must not be hit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if leader_state(&child) == Leader::Running {
            kill_group(&child, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && leader_state(&child) == Leader::Running {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if leader_state(&child) == Leader::Running {
            kill_group(&child, Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && leader_state(&child) == Leader::Running {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if leader_state(&child) == Leader::Zombie {
            // Stragglers of the group (a launcher's QEMU); the zombie leader
            // still holds the group id.
            kill_group(&child, Signal::KILL);
        }
        child.wait().ok()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Leader {
    Running,
    /// Exited, not yet reaped: its pid (the group id) is still reserved.
    Zombie,
    /// Reaped already: the group id may have been reused.
    Reaped,
}

/// The leader's state, without reaping it (`waitid` with `WNOWAIT`).
fn leader_state(child: &Child) -> Leader {
    let Some(pid) = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) else {
        return Leader::Reaped;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match waitid(WaitId::Pid(pid), options) {
        Ok(Some(_)) => Leader::Zombie,
        Ok(None) => Leader::Running,
        Err(_) => Leader::Reaped,
    }
}

fn kill_group(child: &Child, signal: Signal) {
    if let Some(pid) = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) {
        let _ = kill_process_group(pid, signal);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
