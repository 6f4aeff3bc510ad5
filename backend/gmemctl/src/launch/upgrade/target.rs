//! The new QEMU of an upgrade: started as the launcher's child when the
//! launcher lives (it then follows it), else here with the old QEMU's stdio
//! and process group; killed unless the upgrade commits to it.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{qmp_err, UpgradeError};
use crate::launch::launcher::control::{self, ControlReply, ControlRequest};
use crate::launch::process::spawn::{spawn, SpawnSpec};
use crate::launch::process::{JobControl, Process, ProcessError, ProcessId};
use crate::launch::vm::attach::Attached;
use crate::qmp::{QmpClient, QmpError};

/// The new QEMU, killed unless committed.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) process: Process,
    /// The launcher's control socket, if the launcher started it.
    control: Option<PathBuf>,
    committed: bool,
}

impl Target {
    /// Tells the launcher (if any) to follow the new QEMU. Returns whether
    /// a launcher follows it.
    pub(super) fn commit(&mut self) -> bool {
        self.committed = true;
        let Some(path) = self.control.take() else {
            return false;
        };
        let request = ControlRequest::Commit {
            pid: self.process.pid(),
        };
        match control::call(&path, &request, &[], Duration::from_secs(5)) {
            Ok(ControlReply::Done) => true,
            Ok(other) => {
                log::warn!("launcher did not take over the new QEMU: {other:?}");
                false
            }
            Err(e) => {
                log::warn!("launcher unreachable, the new QEMU runs unsupervised: {e}");
                false
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        log::info!("killing the new QEMU (pid {})", self.process.pid());
        if let Some(path) = &self.control {
            let request = ControlRequest::Abort {
                pid: self.process.pid(),
            };
            let _ = control::call(path, &request, &[], Duration::from_secs(5));
        }
        self.process.kill();
    }
}

/// Starts the new QEMU through the launcher, or here if it is gone.
pub(super) fn start_target(
    att: &Attached,
    program: &Path,
    args: Vec<String>,
    fds: Vec<(OwnedFd, RawFd)>,
) -> Result<Target, UpgradeError> {
    if att.launcher().is_some() {
        let path = &att.record.control;
        let targets: Vec<RawFd> = fds.iter().map(|(_, t)| *t).collect();
        let borrowed: Vec<_> = fds
            .iter()
            .map(|(fd, _)| std::os::fd::AsFd::as_fd(fd))
            .collect();
        let request = ControlRequest::Spawn {
            program: program.to_owned(),
            args: args.clone(),
            targets,
        };
        match control::call(path, &request, &borrowed, Duration::from_secs(10)) {
            Ok(ControlReply::Spawned { process }) => {
                return Ok(Target {
                    process: open_target(process)?,
                    control: Some(path.clone()),
                    committed: false,
                })
            }
            Ok(ControlReply::Refused { message }) => {
                return Err(UpgradeError::LauncherRefused(message))
            }
            Ok(ControlReply::Done) => {
                return Err(UpgradeError::LauncherRefused("unexpected reply".into()))
            }
            Err(e) => log::warn!("{e}; starting the new QEMU here"),
        }
    }
    // No launcher: the new QEMU gets the old one's stdio and, if it is in
    // our session, its process group.
    let stdio = [
        att.process.take_fd(0)?,
        att.process.take_fd(1)?,
        att.process.take_fd(2)?,
    ];
    let group = match (
        JobControl::of(att.process.pid()),
        JobControl::of(std::process::id()),
    ) {
        (Some(theirs), Some(ours)) => theirs.joinable_group(ours).unwrap_or(0),
        _ => 0,
    };
    let child = spawn(SpawnSpec {
        program: program.to_owned(),
        args,
        fds,
        stdio: Some(stdio),
        process_group: Some(group),
    })?;
    let process = Process::of_child(&child)?;
    // Not waited for: once this command exits, init reaps it.
    drop(child);
    Ok(Target {
        process,
        control: None,
        committed: false,
    })
}

fn open_target(id: ProcessId) -> Result<Process, UpgradeError> {
    Process::open(id).map_err(|e| match e {
        ProcessError::Gone { pid } => UpgradeError::TargetDied { pid },
        e => e.into(),
    })
}

/// Connects to the new QEMU's QMP, giving up early if it exits.
pub(super) fn connect_target(
    target: &Process,
    path: &Path,
    timeout: Duration,
) -> Result<QmpClient, UpgradeError> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(_) if !target.is_alive() => {
                return Err(UpgradeError::TargetDied { pid: target.pid() })
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(UpgradeError::Qmp {
                    which: "new",
                    source: QmpError::Connect {
                        path: path.to_owned(),
                        source: e,
                    },
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let mut qmp =
        QmpClient::from_stream(stream, left.max(Duration::from_secs(1))).map_err(qmp_err("new"))?;
    qmp.set_timeout(timeout);
    Ok(qmp)
}
