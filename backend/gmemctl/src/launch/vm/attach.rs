//! Finding a launched VM for `upgrade`, `hotplug` and `unplug`: its lock,
//! its record, its running QEMU (checked by pid and start time), gmemctl's
//! QMP monitor of that QEMU, the VM's lease and the launcher if it lives.

use std::path::PathBuf;
use std::time::Duration;

use gmem_protocol::wire::Name;
use gmem_protocol::Client;

use crate::launch::process::{Process, ProcessError};
use crate::launch::vm::lease_fd::{take_lease, LeaseFdError};
use crate::launch::vm::record::{RecordError, VmRecord};
use crate::launch::vm::run_dir::{RunDir, VmLock};
use crate::qmp::{QmpClient, QmpError};

/// Errors of attaching to a running VM.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The record is missing or broken, or the lock is held.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The recorded QEMU has exited.
    #[error("VM {vm} is not running: its QEMU (pid {pid}) has exited (stale record {record})")]
    NotRunning {
        /// The VM.
        vm: Name,
        /// The recorded pid.
        pid: u32,
        /// The record file.
        record: PathBuf,
    },
    /// gmemctl's QMP monitor does not answer.
    #[error(
        "cannot use gmemctl's QMP monitor of VM {vm} at {path} (QEMU serves one client per \
         monitor: is another client connected to it?)"
    )]
    Qmp {
        /// The VM.
        vm: Name,
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: QmpError,
    },
    /// The lease could not be taken from QEMU.
    #[error(transparent)]
    Lease(#[from] LeaseFdError),
    /// A process handle failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// A running VM, locked against other gmemctl commands while this lives.
#[derive(Debug)]
pub struct Attached {
    /// Where its record lives.
    pub run_dir: RunDir,
    /// Its record (write changes back with [`Attached::save`]).
    pub record: VmRecord,
    /// Its VMM process (QEMU or cloud-hypervisor).
    pub process: Process,
    _lock: VmLock,
}

/// Locks VM `vm` (waiting up to `timeout` for another gmemctl) and checks
/// that its QEMU runs.
///
/// # Errors
/// [`AttachError`].
pub fn attach(run_dir: &RunDir, vm: &Name, timeout: Duration) -> Result<Attached, AttachError> {
    let lock = run_dir.lock(vm, timeout)?;
    let record = run_dir.load(vm)?;
    let process = match Process::open(record.vmm.process) {
        Ok(p) => p,
        Err(ProcessError::Gone { pid }) => {
            return Err(AttachError::NotRunning {
                vm: vm.clone(),
                pid,
                record: run_dir.record_path(vm),
            })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Attached {
        run_dir: run_dir.clone(),
        record,
        process,
        _lock: lock,
    })
}

impl Attached {
    /// Connects to gmemctl's QMP monitor of the current QEMU.
    ///
    /// # Errors
    /// [`AttachError::Qmp`].
    pub fn qmp(&self, timeout: Duration) -> Result<QmpClient, AttachError> {
        let path = &self.record.vmm.monitor;
        QmpClient::connect(path, timeout).map_err(|source| AttachError::Qmp {
            vm: self.record.vm.clone(),
            path: path.clone(),
            source,
        })
    }

    /// The VM's lease, taken from QEMU.
    ///
    /// # Errors
    /// [`AttachError::Lease`], [`AttachError::Record`].
    pub fn lease(&self, timeout: Duration) -> Result<Client, AttachError> {
        Ok(take_lease(
            &self.process,
            self.record.vm_id(),
            self.record.lease,
            timeout,
        )?)
    }

    /// The launcher, if it still runs.
    pub fn launcher(&self) -> Option<Process> {
        Process::open(self.record.launcher).ok()
    }

    /// Writes the record back.
    ///
    /// # Errors
    /// [`AttachError::Record`].
    pub fn save(&self) -> Result<(), AttachError> {
        Ok(self.run_dir.save(&self.record)?)
    }
}
