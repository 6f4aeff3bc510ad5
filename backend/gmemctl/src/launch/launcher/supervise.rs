//! The launcher's watch over the VM's QEMU: forwards SIGTERM, SIGINT and
//! SIGHUP to it, starts upgrade targets on request (so they are its
//! children too, with its stdio and process group), follows the new QEMU
//! when an upgrade commits, and returns the exit status of the last one.
//!
//! It holds a copy of the lease socket the whole time, so the lease ends
//! only when both the launcher and every QEMU holding the socket are gone.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use gmem_protocol::Client;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::Signal;

use crate::launch::launcher::control::{ControlReply, ControlRequest, ControlServer, Incoming};
use gmem_protocol::wire::Name;

use crate::launch::process::spawn::{spawn, SpawnSpec};
use crate::launch::process::{Process, ProcessError};
use crate::launch::vmm::VmmKind;

/// Signals the launcher passes on to QEMU.
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// Bound on reading one control request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a retiring QEMU may take to exit once the last one has.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Blocking signals or creating the signalfd failed.
    #[error("cannot set up signal forwarding")]
    Signals(#[source] std::io::Error),
    /// `poll` or `wait` failed.
    #[error("waiting for QEMU failed")]
    Wait(#[source] std::io::Error),
    /// A pidfd could not be opened.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Blocks the forwarded signals in this thread (call before spawning
/// anything, so none is lost) and returns a signalfd reporting them.
///
/// # Errors
/// [`SuperviseError::Signals`].
pub fn block_forwarded_signals() -> Result<OwnedFd, SuperviseError> {
    gmemd::signals::signal_fd(&FORWARDED).map_err(SuperviseError::Signals)
}

/// One QEMU child.
#[derive(Debug)]
struct Generation {
    child: Child,
    process: Process,
}

impl Generation {
    fn new(child: Child) -> Result<Self, SuperviseError> {
        let process = Process::of_child(&child)?;
        Ok(Generation { child, process })
    }

    fn reap(mut self) -> Result<ExitStatus, SuperviseError> {
        self.child.wait().map_err(SuperviseError::Wait)
    }
}

/// The launcher's loop.
#[derive(Debug)]
pub struct Supervisor {
    /// The VM, for what the launcher tells its user.
    vm: Name,
    /// Which VMM it runs, likewise.
    vmm: VmmKind,
    current: Generation,
    /// Upgrade targets started but not committed.
    pending: Vec<Generation>,
    /// Replaced QEMUs not exited yet.
    retiring: Vec<Generation>,
    signals: OwnedFd,
    control: ControlServer,
    /// The launcher's copy of the lease socket.
    _lease: Option<Client>,
}

/// How the last QEMU ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Its pid.
    pub pid: u32,
    /// Its exit status.
    pub status: ExitStatus,
}

impl Supervisor {
    /// Supervises `qemu`, VM `vm`'s VMM process of kind `vmm`; `signals` comes from
    /// [`block_forwarded_signals`].
    ///
    /// # Errors
    /// [`SuperviseError::Process`].
    pub fn new(
        vm: Name,
        vmm: VmmKind,
        qemu: Child,
        signals: OwnedFd,
        control: ControlServer,
    ) -> Result<Self, SuperviseError> {
        Ok(Supervisor {
            vm,
            vmm,
            current: Generation::new(qemu)?,
            pending: Vec::new(),
            retiring: Vec::new(),
            signals,
            control,
            _lease: None,
        })
    }

    /// Keeps the launcher's copy of the lease socket until [`Self::run`]
    /// returns, so the lease lasts while the launcher does.
    pub fn holding(mut self, lease: Client) -> Self {
        self._lease = Some(lease);
        self
    }

    /// The QEMU being followed now.
    pub fn current(&self) -> &Process {
        &self.current.process
    }

    /// Runs until the current QEMU exits; returns how it ended.
    ///
    /// # Errors
    /// [`SuperviseError::Wait`].
    pub fn run(mut self) -> Result<Ended, SuperviseError> {
        loop {
            let ready = self.wait_ready()?;
            if ready.signal {
                self.forward_signal();
            }
            if ready.control {
                // Requests change which child is current or pending: the
                // exits seen by this poll are reported again by the next.
                self.serve_control();
                continue;
            }
            if ready.current {
                return self.finish();
            }
            reap_first_exited(&mut self.pending, &ready.pending, "upgrade target");
            let replaced = format!("replaced {}", self.vmm);
            reap_first_exited(&mut self.retiring, &ready.retiring, &replaced);
        }
    }

    /// Polls everything; returns what is ready.
    fn wait_ready(&self) -> Result<Ready, SuperviseError> {
        let mut fds = vec![
            PollFd::new(&self.signals, PollFlags::IN),
            PollFd::from_borrowed_fd(self.control.as_fd(), PollFlags::IN),
            PollFd::new(self.current.process.pidfd(), PollFlags::IN),
        ];
        for g in self.pending.iter().chain(&self.retiring) {
            fds.push(PollFd::new(g.process.pidfd(), PollFlags::IN));
        }
        loop {
            match poll(&mut fds, None) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(SuperviseError::Wait(e.into())),
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        let (pending, retiring) = ready[3..].split_at(self.pending.len());
        Ok(Ready {
            signal: ready[0],
            control: ready[1],
            current: ready[2],
            pending: pending.to_vec(),
            retiring: retiring.to_vec(),
        })
    }

    fn forward_signal(&self) {
        let signo = gmemd::signals::read_signal(self.signals.as_fd());
        let Some(signal) = i32::try_from(signo).ok().and_then(Signal::from_named_raw) else {
            return;
        };
        log::info!(
            "forwarding {signal:?} to {} (pid {})",
            self.vmm,
            self.current.process.pid()
        );
        if let Err(e) = self.current.process.signal(signal) {
            log::warn!("{e}");
        }
    }

    fn serve_control(&mut self) {
        loop {
            match self.control.accept(CONTROL_TIMEOUT) {
                Ok(Some(mut incoming)) => {
                    let reply = self.handle(&mut incoming);
                    incoming.reply(&reply);
                }
                Ok(None) => return,
                Err(e) => log::warn!("control request failed: {e}"),
            }
        }
    }

    fn handle(&mut self, incoming: &mut Incoming) -> ControlReply {
        let refused = |message: String| ControlReply::Refused { message };
        match incoming.request().clone() {
            ControlRequest::Spawn {
                program,
                args,
                targets,
            } => {
                if targets.len() != incoming.fds.len() {
                    return refused(format!(
                        "{} fds for {} targets",
                        incoming.fds.len(),
                        targets.len()
                    ));
                }
                let fds = std::mem::take(&mut incoming.fds)
                    .into_iter()
                    .zip(targets)
                    .collect();
                let spec = SpawnSpec {
                    program,
                    args,
                    fds,
                    stdio: None,
                    process_group: None,
                };
                match spawn(spec)
                    .map_err(|e| crate::error_chain(&e))
                    .and_then(|child| Generation::new(child).map_err(|e| crate::error_chain(&e)))
                {
                    Ok(g) => {
                        let process = g.process.id();
                        log::info!("started upgrade target {} (pid {})", self.vmm, process.pid);
                        self.pending.push(g);
                        ControlReply::Spawned { process }
                    }
                    Err(message) => refused(message),
                }
            }
            ControlRequest::Commit { pid } => {
                let Some(at) = self.pending.iter().position(|g| g.process.pid() == pid) else {
                    return refused(format!("no upgrade target with pid {pid}"));
                };
                let new = self.pending.swap_remove(at);
                let old = std::mem::replace(&mut self.current, new);
                eprintln!(
                    "gmemctl: VM {}: upgraded, now following {} pid {pid} (replacing pid {})",
                    self.vm,
                    self.vmm,
                    old.process.pid()
                );
                self.retiring.push(old);
                ControlReply::Done
            }
            ControlRequest::Abort { pid } => {
                let Some(g) = self.pending.iter().find(|g| g.process.pid() == pid) else {
                    return refused(format!("no upgrade target with pid {pid}"));
                };
                if let Err(e) = g.process.signal(Signal::KILL) {
                    log::warn!("{e}");
                }
                ControlReply::Done
            }
        }
    }

    /// Kills and reaps every QEMU (launch failed after QEMU started).
    pub fn kill(self) {
        for g in self
            .pending
            .into_iter()
            .chain(self.retiring)
            .chain([self.current])
        {
            g.process.kill();
            let _ = g.reap();
        }
    }

    /// The current QEMU exited: end the others and return how it ended.
    fn finish(self) -> Result<Ended, SuperviseError> {
        for g in self.pending {
            // A target that never took over holds the lease socket: it must
            // not keep the lease alive after the VM ended.
            g.process.kill();
            let _ = g.reap();
        }
        for g in self.retiring {
            if !g.process.wait_exit(RETIRE_WAIT).unwrap_or(false) {
                g.process.kill();
            }
            let _ = g.reap();
        }
        let pid = self.current.process.pid();
        let status = self.current.reap()?;
        Ok(Ended { pid, status })
    }
}

/// What one poll found ready.
#[derive(Debug)]
struct Ready {
    signal: bool,
    control: bool,
    current: bool,
    pending: Vec<bool>,
    retiring: Vec<bool>,
}

/// Reaps the first child of `list` whose pidfd was ready (the others are
/// reported again by the next poll).
fn reap_first_exited(list: &mut Vec<Generation>, ready: &[bool], what: &str) {
    let Some(at) = ready.iter().position(|&r| r) else {
        return;
    };
    let g = list.swap_remove(at);
    let pid = g.process.pid();
    match g.reap() {
        Ok(status) => log::info!("{what} (pid {pid}) exited: {status}"),
        Err(e) => log::warn!("{what} (pid {pid}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::launch::launcher::control::call;

    fn vm() -> Name {
        Name::new("vm").unwrap()
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn forwards_signals_and_returns_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let signals = block_forwarded_signals().unwrap();
        let control = ControlServer::bind(&dir.path().join("c")).unwrap();
        // Started like QEMU, so with the blocked signals unblocked.
        let child = spawn(SpawnSpec {
            program: "sleep".into(),
            args: vec!["30".into()],
            fds: vec![],
            stdio: None,
            process_group: None,
        })
        .unwrap();
        let sup = Supervisor::new(vm(), VmmKind::Qemu, child, signals, control).unwrap();
        // Thread-directed, so only this thread (which blocks it) gets it.
        // SAFETY: raise has no memory-safety preconditions.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        let ended = sup.run().unwrap();
        assert_eq!(crate::launch::process::exit::exit_code(ended.status), 143);
    }

    #[test]
    fn follows_a_committed_upgrade_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let (signals, _keep_open) = pipe();
        let control = ControlServer::bind(&path).unwrap();
        // The first "QEMU" exits once told to (its stdin closes).
        let (go_r, go_w) = pipe();
        let first = Command::new("sh")
            .args(["-c", "read x; exit 0"])
            .stdin(std::fs::File::from(go_r))
            .spawn()
            .unwrap();
        let sup = Supervisor::new(vm(), VmmKind::Qemu, first, signals, control).unwrap();
        let runner = std::thread::spawn(move || sup.run().unwrap());
        let t = Duration::from_secs(5);
        let (marker_r, marker_w) = pipe();
        let spawn = ControlRequest::Spawn {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "cat /proc/self/fd/40 >/dev/null; exit 5".into(),
            ],
            targets: vec![40],
        };
        let ControlReply::Spawned { process } =
            call(&path, &spawn, &[marker_r.as_fd()], t).unwrap()
        else {
            panic!("not spawned")
        };
        // Unknown pids are refused; a second target can be aborted.
        let reply = call(&path, &ControlRequest::Commit { pid: 1 }, &[], t).unwrap();
        assert!(matches!(reply, ControlReply::Refused { .. }), "{reply:?}");
        let spare = ControlRequest::Spawn {
            program: "sleep".into(),
            args: vec!["30".into()],
            targets: vec![],
        };
        let ControlReply::Spawned { process: spare } = call(&path, &spare, &[], t).unwrap() else {
            panic!("not spawned")
        };
        let abort = ControlRequest::Abort { pid: spare.pid };
        assert_eq!(call(&path, &abort, &[], t).unwrap(), ControlReply::Done);
        let commit = ControlRequest::Commit { pid: process.pid };
        assert_eq!(call(&path, &commit, &[], t).unwrap(), ControlReply::Done);
        // The old one exits: the launcher keeps going with the new one...
        drop(go_w);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!runner.is_finished());
        // ...and returns the new one's status.
        drop(marker_w);
        let ended = runner.join().unwrap();
        assert_eq!(
            (
                ended.pid,
                crate::launch::process::exit::exit_code(ended.status)
            ),
            (process.pid, 5)
        );
    }
}
