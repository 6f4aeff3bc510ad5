//! `gmemctl upgrade`: live replacement of a VM's QEMU, moving only device
//! state.
//!
//! 1. Takes the lease socket, main RAM and DIMM files from the running QEMU
//!    (`pidfd_getfd`) and starts a second QEMU on the same files with
//!    `-incoming defer`: as the launcher's child when the launcher lives
//!    (it then follows the new QEMU), else detached, with the old QEMU's
//!    stdio and process group.
//! 2. Sets `x-ignore-shared` on both over QMP and migrates over a unix
//!    socket. Shared file-backed RAM blocks are skipped: the new QEMU
//!    already maps the very same pages, so only device state and the
//!    little private RAM (firmware, ROMs) move.
//! 3. Waits for the new QEMU to run the guest, ends the old one and moves
//!    gmemctl's QMP socket path and the VM's record to the new QEMU.
//!
//! The new QEMU inherits the same lease socket, so the lease (its id and
//! bindings) continues when the old QEMU exits, and gmemd is told the new
//! QEMU holds it (HANDOFF). If anything fails before the switch, the new
//! QEMU is killed and the VM runs on, on the old one.
//!
//! Parts: `target` (the new QEMU: started through the launcher or here,
//! killed unless committed), `migration` (the handoff over QMP).

mod ch;
mod migration;
mod target;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gmem_protocol::wire::{LeaseId, Name};
use serde::Serialize;

use crate::launch::launcher::control::ControlError;
use crate::launch::process::spawn::SpawnError;
use crate::launch::process::{Process, ProcessError};
use crate::launch::qemu::args::{ArgsError, QemuCommand};
use crate::launch::qemu::cmdline::{AddedOptions, StartDimm};
use crate::launch::qemu::layout::RamRange;
use crate::launch::qemu::{DIMM_FD_BASE, LEASE_FD, RAM_FD};
use crate::launch::vm::attach::{attach, AttachError, Attached};
use crate::launch::vm::lease_fd::take_lease;
use crate::launch::vm::record::{RecordError, VmRecord, VmmRecord};
use crate::launch::vm::run_dir::RunDir;
use crate::launch::vm::run_dir::{check_socket_path, next_qmp_path};
use crate::launch::vmm::VmmKind;
use crate::qmp::QmpError;
use migration::{migrate, wait_running};
use target::{connect_target, start_target};

/// How long the old QEMU may take to quit before it is killed.
const QUIT_WAIT: Duration = Duration::from_secs(10);

/// Errors of an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Finding the VM.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The new QEMU arguments.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The new arguments would put RAM elsewhere.
    #[error(
        "the new QEMU arguments map RAM as {new:?}, the running VM as {old:?}: the guest \
         cannot move between different layouts"
    )]
    Layout {
        /// Running layout.
        old: Vec<RamRange>,
        /// New layout.
        new: Vec<RamRange>,
    },
    /// The new cloud-hypervisor arguments.
    #[error(transparent)]
    ChArgs(#[from] crate::launch::ch::command::ChArgsError),
    /// A VMM of another kind was given.
    #[error("{program} cannot take over a VM that runs under {running}")]
    OtherVmm {
        /// The new program.
        program: PathBuf,
        /// The VMM running the VM.
        running: VmmKind,
    },
    /// A cloud-hypervisor API request failed.
    #[error("{which} cloud-hypervisor: API request failed")]
    ChApi {
        /// `old` or `new`.
        which: &'static str,
        /// Cause.
        #[source]
        source: crate::launch::ch::api::ApiError,
    },
    /// cloud-hypervisor's migration did not complete.
    #[error("migration to the new cloud-hypervisor failed ({reason}); {fate}")]
    ChMigration {
        /// What went wrong.
        reason: String,
        /// What became of the VM.
        fate: &'static str,
    },
    /// The VM is in a state that cannot migrate.
    #[error("VM {vm} is {state}: only a running or paused VM can be upgraded")]
    State {
        /// The VM.
        vm: Name,
        /// QEMU's run state.
        state: String,
    },
    /// A process handle failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Starting the new QEMU here failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Talking to the launcher failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The launcher refused to start the new QEMU.
    #[error("the launcher refused to start the new QEMU: {0}")]
    LauncherRefused(String),
    /// The new VMM process exited before the switch.
    #[error("the new VMM process (pid {pid}) exited before the switch (see its stderr or log)")]
    TargetDied {
        /// Its pid.
        pid: u32,
    },
    /// A QMP command failed.
    #[error("{which} QEMU: QMP failed")]
    Qmp {
        /// `old` or `new`.
        which: &'static str,
        /// Cause.
        #[source]
        source: QmpError,
    },
    /// The migration failed; the old QEMU runs on.
    #[error("migration to the new QEMU failed; the VM keeps running on the old QEMU")]
    Migration(#[source] QmpError),
    /// The new QEMU is not in the state it should be.
    #[error("the new QEMU is {state}, expected {expected}")]
    TargetState {
        /// Its state.
        state: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The record.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What to upgrade to.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Where the VM's record lives.
    pub run_dir: RunDir,
    /// The VM.
    pub vm: Name,
    /// A new QEMU command (program and arguments); default: the running one.
    pub command: Option<Vec<String>>,
    /// Only a new VMM binary, same arguments.
    pub binary: Option<PathBuf>,
    /// Bound on each step (lock, QEMU start, migration).
    pub timeout: Duration,
}

/// What happened, with QEMU's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    /// The VM.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub vm: Name,
    /// Pid of the replaced QEMU.
    pub old_pid: u32,
    /// Pid of the QEMU running the VM now.
    pub new_pid: u32,
    /// Its generation (1 after the first upgrade).
    pub generation: u32,
    /// The lease, unchanged.
    #[serde(with = "crate::launch::vm::serde_fields::lease")]
    pub lease: LeaseId,
    /// Whether the launcher started the new QEMU and follows it.
    pub supervised: bool,
    /// QEMU's `total-time` of the migration, ms.
    pub total_time_ms: Option<u64>,
    /// QEMU's `downtime`: how long the guest was stopped, ms.
    pub downtime_ms: Option<u64>,
    /// QEMU's `setup-time`, ms.
    pub setup_time_ms: Option<u64>,
    /// RAM bytes sent (only non-shared RAM: firmware, ROMs).
    pub ram_transferred_bytes: Option<u64>,
    /// Bytes of the VM's shared RAM that stayed in place, at least, as the
    /// old QEMU reports it (shared backends skipped by `x-ignore-shared`,
    /// less every page the migration stream carried); `None` where the
    /// VMM reports nothing to measure it by (cloud-hypervisor).
    pub ram_in_place_bytes: Option<u64>,
    /// From `migrate` to `completed`, measured here, ms.
    pub handoff_ms: f64,
    /// From starting the new QEMU to its QMP answering, ms.
    pub start_ms: f64,
    /// The whole command, ms.
    pub elapsed_ms: f64,
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Replaces the VM's QEMU by a new one on the same memory.
///
/// # Errors
/// [`UpgradeError`]; before the switch the VM stays on the old QEMU.
pub fn upgrade(opts: &UpgradeOptions) -> Result<UpgradeReport, UpgradeError> {
    let t0 = Instant::now();
    let mut att = attach(&opts.run_dir, &opts.vm, opts.timeout)?;
    if att.record.vmm.kind == VmmKind::CloudHypervisor {
        return ch::upgrade(opts, att, t0);
    }
    let rec = att.record.clone();
    let command = new_command(opts, &rec.vmm)?;
    if VmmKind::of_program(&command.program) != VmmKind::Qemu {
        return Err(UpgradeError::OtherVmm {
            program: command.program,
            running: VmmKind::Qemu,
        });
    }
    let old_layout: Vec<RamRange> = rec.memory.bindings.iter().map(|b| b.range).collect();
    let new_layout = command
        .machine()?
        .main_ram(rec.memory.size)
        .map_err(ArgsError::from)?;
    if new_layout != old_layout {
        return Err(UpgradeError::Layout {
            old: old_layout,
            new: new_layout,
        });
    }
    for file in command.truncating_log_files() {
        log::warn!(
            "{file}: the new QEMU truncates this file when it starts; use \
             -chardev file,...,append=on to keep the log across upgrades"
        );
    }

    let mut old = att.qmp(opts.timeout)?;
    let state = old.query_status().map_err(qmp_err("old"))?;
    if !matches!(
        state.as_str(),
        "running" | "paused" | "prelaunch" | "suspended"
    ) {
        return Err(UpgradeError::State {
            vm: rec.vm.clone(),
            state,
        });
    }

    // Everything the new QEMU inherits comes from the old one.
    let mut fds = vec![
        (att.process.take_fd(LEASE_FD)?, LEASE_FD),
        (att.process.take_fd(RAM_FD)?, RAM_FD),
    ];
    let mut dimms = Vec::new();
    for (fd, dimm) in (DIMM_FD_BASE..).zip(&rec.dimms) {
        fds.push((att.process.take_fd(dimm.qemu_fd)?, fd));
        dimms.push(StartDimm {
            id: &dimm.id,
            size: dimm.size,
            addr: dimm.addr,
            dimm_slot: dimm.dimm_slot,
            fd,
        });
    }
    let generation = rec.vmm.generation + 1;
    let new_qmp = next_qmp_path(&rec.vmm.monitor, generation);
    check_socket_path(&new_qmp)?;
    let _ = std::fs::remove_file(&new_qmp);
    let migration = opts.run_dir.migration(&rec.vm);
    let _ = std::fs::remove_file(&migration);
    let mut args = command.args.clone();
    args.extend(
        AddedOptions {
            size: rec.memory.size,
            max_memory: rec.memory.max_memory,
            slots: rec.memory.slots,
            ram_fd: RAM_FD,
            qmp: &new_qmp,
            dimms: &dimms,
            incoming: true,
        }
        .to_args(),
    );
    args.extend(crate::launch::devices::qemu_args(&rec.devices));

    let t_start = Instant::now();
    let mut target = start_target(&att, &command.program, args, fds)?;
    let mut new = connect_target(&target.process, &new_qmp, opts.timeout)?;
    let start_ms = ms(t_start.elapsed());
    let new_state = new.query_status().map_err(qmp_err("new"))?;
    if new_state != "inmigrate" {
        return Err(UpgradeError::TargetState {
            state: new_state,
            expected: "inmigrate",
        });
    }

    let migration::Handoff {
        info,
        wall_ms: handoff_ms,
        in_place_bytes: in_place,
    } = migrate(&mut old, &mut new, &migration, opts.timeout)?;
    // From here the new QEMU holds the VM's state: it is kept whatever
    // happens next, and the old one (stopped, `postmigrate`) must not run.
    let supervised = target.commit();
    let running = if state == "running" {
        wait_running(&mut new, opts.timeout)
    } else {
        Ok(())
    };

    // The switch is done: end the old QEMU.
    let old_pid = att.process.pid();
    if let Err(e) = old.quit() {
        log::warn!("old QEMU did not take quit: {e}");
    }
    end_old(&att, VmmKind::Qemu);
    let qmp = move_monitor(new_qmp, &rec.vmm.monitor);
    att.record.vmm = VmmRecord {
        kind: VmmKind::Qemu,
        process: target.process.id(),
        generation,
        program: command.program.clone(),
        args: command.args.clone(),
        monitor: qmp,
        machine: rec.vmm.machine.clone(),
    };
    // The new QEMU has each DIMM file inherited at its fd, not in an fd set.
    for (dimm, fd) in att.record.dimms.iter_mut().zip(DIMM_FD_BASE..) {
        dimm.qemu_fd = fd;
        dimm.fdset = None;
    }
    att.save()?;
    hand_lease_over(&target.process, &rec);
    running?;
    Ok(UpgradeReport {
        vm: rec.vm,
        old_pid,
        new_pid: target.process.pid(),
        generation,
        lease: rec.lease,
        supervised,
        total_time_ms: info.total_time_ms,
        downtime_ms: info.downtime_ms,
        setup_time_ms: info.setup_time_ms,
        ram_transferred_bytes: info.ram_transferred_bytes,
        ram_in_place_bytes: Some(in_place),
        handoff_ms,
        start_ms,
        elapsed_ms: ms(t0.elapsed()),
    })
}

/// Waits for the old VMM process, asked to end, to exit; kills it if it
/// does not within [`QUIT_WAIT`].
fn end_old(att: &Attached, vmm: VmmKind) {
    if !att.process.wait_exit(QUIT_WAIT).unwrap_or(false) {
        let pid = att.process.pid();
        log::warn!("old {vmm} (pid {pid}) did not exit; killing it");
        att.process.kill();
    }
}

/// Moves the new VMM's socket `new` to the VM's usual path `usual` (a
/// renamed unix socket keeps serving); returns where it is now.
fn move_monitor(new: PathBuf, usual: &Path) -> PathBuf {
    match std::fs::rename(&new, usual) {
        Ok(()) => usual.to_owned(),
        Err(e) => {
            log::warn!(
                "cannot move {} to {}: {e}; the VM's socket stays at {}",
                new.display(),
                usual.display(),
                new.display()
            );
            new
        }
    }
}

/// Tells gmemd that `new` holds the VM's lease from now on (it inherited
/// the socket); a refusal only changes what `gmemctl status` shows.
fn hand_lease_over(new: &Process, rec: &VmRecord) {
    let timeout = Duration::from_secs(10);
    match take_lease(new, rec.vm_id(), rec.lease, timeout) {
        Ok(mut lease) => {
            let at = LEASE_FD.unsigned_abs();
            if let Err(e) = lease.handoff(new.pidfd().as_fd(), at) {
                log::warn!("gmemd did not take the handoff of the lease to the new VMM: {e}");
            }
        }
        Err(e) => log::warn!("cannot hand the lease to the new VMM in gmemd: {e}"),
    }
}

pub(super) fn qmp_err(which: &'static str) -> impl Fn(QmpError) -> UpgradeError {
    move |source| UpgradeError::Qmp { which, source }
}

/// The new QEMU command: the given one, or the running one (with
/// `--qemu`'s binary), without `-incoming`.
fn new_command(opts: &UpgradeOptions, running: &VmmRecord) -> Result<QemuCommand, ArgsError> {
    let mut command = match &opts.command {
        Some(argv) => QemuCommand::from_argv(argv)?,
        None => QemuCommand {
            program: running.program.clone(),
            args: running.args.clone(),
        },
    };
    if let Some(program) = &opts.binary {
        command.program = program.clone();
    }
    Ok(command.without_incoming())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::launch::process::ProcessId;

    fn running() -> VmmRecord {
        VmmRecord {
            kind: VmmKind::Qemu,
            process: ProcessId {
                pid: 1,
                start_time: 1,
            },
            generation: 0,
            program: "/usr/bin/qemu-system-x86_64".into(),
            args: vec![
                "-M".into(),
                "q35".into(),
                "-incoming".into(),
                "tcp:0:4444".into(),
            ],
            monitor: "/run/vm.qmp".into(),
            machine: "q35".into(),
        }
    }

    /// Options of an upgrade of VM `vm` in a run directory that does not
    /// exist (shared with the cloud-hypervisor tests).
    pub(super) fn opts() -> UpgradeOptions {
        UpgradeOptions {
            run_dir: RunDir::new("/nonexistent"),
            vm: Name::new("vm").unwrap(),
            command: None,
            binary: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn new_command_defaults_to_the_running_one() {
        let c = new_command(&opts(), &running()).unwrap();
        assert_eq!(c.program, Path::new("/usr/bin/qemu-system-x86_64"));
        assert_eq!(c.args, ["-M", "q35"]);
        let o = UpgradeOptions {
            binary: Some("/opt/qemu/bin/qemu-system-x86_64".into()),
            ..opts()
        };
        let c = new_command(&o, &running()).unwrap();
        assert_eq!(c.program, Path::new("/opt/qemu/bin/qemu-system-x86_64"));
        let o = UpgradeOptions {
            command: Some(vec!["qemu-new".into(), "-M".into(), "pc".into()]),
            ..opts()
        };
        let c = new_command(&o, &running()).unwrap();
        assert_eq!((c.program.to_str().unwrap(), c.args.len()), ("qemu-new", 2));
    }

    #[test]
    fn a_vm_that_is_not_running_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let o = UpgradeOptions {
            run_dir: RunDir::new(dir.path()),
            ..opts()
        };
        let err = upgrade(&o).unwrap_err();
        assert!(
            err.to_string()
                .contains("VM vm is not running under gmemctl launch"),
            "{err}"
        );
    }
}
