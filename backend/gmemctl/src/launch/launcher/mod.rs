//! `gmemctl launch`: one command for QEMU or cloud-hypervisor on gmemd
//! memory.
//!
//! 1. Checks the VMM arguments (`vmm_command`: QEMU without `-m` or
//!    `memory-backend=`, with its machine type; cloud-hypervisor without
//!    `--memory` or `--memory-zone`), hence where the VMM will map RAM
//!    ([`crate::launch::qemu::layout`], [`crate::launch::ch::command::main_ram`]).
//! 2. Opens the VM's lease (refused while another lease of the VM is open:
//!    a second launch of a running VM fails here).
//! 3. Creates the VM's memory file, or reopens it with its content (a
//!    relaunch after the VMM exited or crashed), and records the bindings
//!    the VMM will use (refused if another VM owns the file).
//! 4. Starts the VMM with the memory file and the lease socket inherited at
//!    [`super::RAM_FD`] and [`super::LEASE_FD`] and the memory options
//!    added, writes the VM's record and supervises the VMM ([`supervise`])
//!    until it exits.
//!
//! Both the launcher and the VMM hold the lease socket, so the lease (and
//! the bindings) last until both are gone: killing the launcher leaves the
//! VM running with its lease; a VMM that exits or crashes ends the lease
//! once the launcher has exited with its status.

pub mod control;
pub mod supervise;
mod vmm_command;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gmem_protocol::wire::{BindRequest, LeaseId, MemoryKind, Name, VmId};
use gmem_protocol::{Client, ClientError};

use crate::launch::ch::{self, command::ChArgsError, command::ChCommand};
use crate::launch::launcher::control::{ControlError, ControlServer};
use crate::launch::launcher::supervise::{block_forwarded_signals, SuperviseError, Supervisor};
use crate::launch::process::exit::{describe_exit, exit_code};
use crate::launch::process::spawn::{spawn, SpawnError, SpawnSpec};
use crate::launch::process::ProcessId;
use crate::launch::qemu::args::{ArgsError, QemuCommand};
use crate::launch::qemu::cmdline::{check_kind, AddedOptions, KindError};
use crate::launch::qemu::{LEASE_FD, MAIN_SLOT, RAM_FD};
use crate::launch::vm::record::{
    BindingRecord, MemoryRecord, RecordError, VmRecord, VmmRecord, RECORD_VERSION,
};
use crate::launch::vm::run_dir::{check_socket_path, next_qmp_path, RunDir};
use crate::launch::vmm::VmmKind;
use gmemd::size::format_size;
use vmm_command::VmmCommand;

/// Hotplug slots when `--max-memory` is given without `--slots`.
pub const DEFAULT_SLOTS: u32 = 8;
/// QEMU's limit on memory slots (ACPI_MAX_RAM_SLOTS).
pub const MAX_SLOTS: u32 = 256;
/// Bound on waiting for another gmemctl working on the same VM.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each request to gmemd.
const GMEMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of `gmemctl launch`.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The QEMU arguments.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// A memory kind QEMU cannot map.
    #[error(transparent)]
    Kind(#[from] KindError),
    /// The cloud-hypervisor arguments or options it cannot take.
    #[error(transparent)]
    ChArgs(#[from] ChArgsError),
    /// A size that is not a multiple of the page size.
    #[error("{what} {} is not a multiple of the {kind} page size ({})", format_size(*size), format_size(kind.page_size()))]
    Unaligned {
        /// Which option.
        what: &'static str,
        /// The size.
        size: u64,
        /// The kind.
        kind: MemoryKind,
    },
    /// Inconsistent hotplug options.
    #[error("{0}")]
    Hotplug(String),
    /// The default memory file name would be invalid.
    #[error("memory file name for VM {0} is not a valid gmemd name (use --file)")]
    FileName(Name),
    /// The run directory or the record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The VM already has a lease: it runs.
    #[error("VM {vm} is already running ({message})")]
    AlreadyRunning {
        /// The VM.
        vm: Name,
        /// gmemd's explanation.
        message: String,
    },
    /// Opening the lease failed otherwise.
    #[error("cannot open a lease for VM {vm} with gmemd")]
    Lease {
        /// The VM.
        vm: Name,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// Creating or opening the memory file failed.
    #[error("cannot get memory file {file} from gmemd")]
    Memory {
        /// The file.
        file: Name,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// A vhost-user device could not be set up.
    #[error(transparent)]
    Device(#[from] crate::launch::devices::DeviceError),
    /// Recording a binding failed.
    #[error("cannot bind {file} +{offset:#x} at gpa {gpa:#x} for VM {vm}")]
    Bind {
        /// The VM.
        vm: Name,
        /// The file.
        file: Name,
        /// Guest-physical address.
        gpa: u64,
        /// File offset.
        offset: u64,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// Duplicating the lease socket failed.
    #[error("cannot share the lease socket with the VMM")]
    Dup(#[source] std::io::Error),
    /// gmemd refused to show the VMM as the lease's process.
    #[error("gmemd refused the handoff of lease {lease} to the VMM (pid {pid})")]
    Handoff {
        /// The lease.
        lease: LeaseId,
        /// The VMM's pid.
        pid: u32,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Starting the VMM.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Supervising the VMM.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// gmemd's socket.
    pub socket: PathBuf,
    /// Where records and sockets go.
    pub run_dir: RunDir,
    /// The VM.
    pub vm: VmId,
    /// Main RAM bytes.
    pub memory: u64,
    /// Memory kind of main RAM.
    pub kind: MemoryKind,
    /// Memory file name; default `<vm>.ram`.
    pub file: Option<Name>,
    /// Hotplug limit (`maxmem`).
    pub max_memory: Option<u64>,
    /// Hotplug slots.
    pub slots: Option<u32>,
    /// gmemctl's QMP socket; default `RUN_DIR/<vm>.qmp`.
    pub qmp: Option<PathBuf>,
    /// Disks served by gmemd as vhost-user-blk devices.
    pub disks: Vec<crate::launch::devices::DiskArg>,
    /// A vhost-user device even without disks (memory table confirmation).
    pub vhost_device: bool,
    /// The VMM program (QEMU or cloud-hypervisor) and its arguments.
    pub command: Vec<String>,
}

impl LaunchOptions {
    fn check(&self) -> Result<(VmmCommand, u32), LaunchError> {
        check_kind(self.kind)?;
        let page = self.kind.page_size();
        if self.memory == 0 || self.memory % page != 0 {
            return Err(LaunchError::Unaligned {
                what: "--memory",
                size: self.memory,
                kind: self.kind,
            });
        }
        let slots = match (self.max_memory, self.slots) {
            (None, None) => 0,
            (None, Some(_)) => {
                return Err(LaunchError::Hotplug("--slots needs --max-memory".into()))
            }
            (Some(max), slots) => {
                if max <= self.memory {
                    return Err(LaunchError::Hotplug(format!(
                        "--max-memory {} must exceed --memory {}",
                        format_size(max),
                        format_size(self.memory)
                    )));
                }
                if max % 4096 != 0 {
                    return Err(LaunchError::Unaligned {
                        what: "--max-memory",
                        size: max,
                        kind: MemoryKind::Memfd,
                    });
                }
                let slots = slots.unwrap_or(DEFAULT_SLOTS);
                if slots == 0 || slots > MAX_SLOTS {
                    return Err(LaunchError::Hotplug(format!(
                        "--slots must be 1..={MAX_SLOTS}"
                    )));
                }
                slots
            }
        };
        let (program, args) = self.command.split_first().ok_or(ArgsError::NoCommand)?;
        let program = PathBuf::from(program);
        let vmm = match VmmKind::of_program(&program) {
            VmmKind::Qemu => {
                let command = QemuCommand {
                    program,
                    args: args.to_vec(),
                };
                let machine = command.machine()?;
                let ram = machine.main_ram(self.memory).map_err(ArgsError::from)?;
                VmmCommand::Qemu {
                    command,
                    machine,
                    ram,
                }
            }
            VmmKind::CloudHypervisor => {
                self.check_for_ch()?;
                let ram = ch::command::main_ram(self.memory);
                VmmCommand::Ch {
                    command: ChCommand::new(program, args.to_vec())?,
                    ram,
                }
            }
        };
        Ok((vmm, slots))
    }

    /// gmemctl options that have no cloud-hypervisor equivalent here.
    fn check_for_ch(&self) -> Result<(), ChArgsError> {
        let unsupported = |option, reason| Err(ChArgsError::Unsupported { option, reason });
        if self.max_memory.is_some() {
            return unsupported(
                "--max-memory",
                "cloud-hypervisor hot-plugs only memory it allocates itself (ACPI or \
                 virtio-mem), never a given file",
            );
        }
        if !self.disks.is_empty() {
            return unsupported(
                "--disk",
                "gmemd's vhost-user disks are wired up for QEMU only",
            );
        }
        if self.qmp.is_some() {
            return unsupported(
                "--qmp",
                "cloud-hypervisor has an API socket, RUN_DIR/NAME.api",
            );
        }
        Ok(())
    }
}

/// Launches and supervises the VMM; `on_started` is told once it runs.
/// Returns the exit code to exit with: the VMM's, or 128 + signal.
///
/// # Errors
/// [`LaunchError`] for everything that stops the VMM from starting; nothing
/// of the refused launch is left in the run directory then.
pub fn launch(opts: &LaunchOptions, on_started: impl FnOnce(&VmRecord)) -> Result<u8, LaunchError> {
    let (vmm, slots) = opts.check()?;
    let vm_name = &opts.vm.name;
    let file = match &opts.file {
        Some(f) => f.clone(),
        None => Name::new(&format!("{vm_name}.ram"))
            .map_err(|_| LaunchError::FileName(vm_name.clone()))?,
    };
    let run_dir = &opts.run_dir;
    let monitor = match vmm.kind() {
        VmmKind::Qemu => opts.qmp.clone().unwrap_or_else(|| run_dir.qmp(vm_name)),
        VmmKind::CloudHypervisor => run_dir.api(vm_name),
    };
    check_socket_path(&next_qmp_path(&monitor, 9999))?;
    let control_path = run_dir.control(vm_name);
    check_socket_path(&control_path)?;
    check_socket_path(&run_dir.migration(vm_name))?;
    let lock = run_dir.lock(vm_name, LOCK_TIMEOUT)?;
    let started = start(opts, &vmm, slots, &file, &monitor, &control_path);
    let (supervisor, record) = match started {
        Ok(started) => started,
        Err(e) => {
            // A refused launch leaves nothing behind, its lock included.
            lock.remove();
            return Err(e);
        }
    };
    drop(lock);
    on_started(&record);

    let status = supervisor.run()?;
    eprintln!(
        "gmemctl: VM {vm_name}: {} (pid {}) {}",
        vmm.kind(),
        status.pid,
        describe_exit(status.status)
    );
    cleanup(run_dir, vm_name);
    Ok(exit_code(status.status))
}

/// Opens the lease, gets and binds the memory, starts the VMM with both,
/// hands the lease to it and writes the record. Everything is undone on
/// failure: the lease ends with its socket, the VMM is killed.
fn start(
    opts: &LaunchOptions,
    vmm: &VmmCommand,
    slots: u32,
    file: &Name,
    monitor: &Path,
    control_path: &Path,
) -> Result<(Supervisor, VmRecord), LaunchError> {
    let vm_name = &opts.vm.name;
    // Every wait on gmemd is bounded, the handshake included.
    let stream = UnixStream::connect(&opts.socket)
        .and_then(|s| s.set_read_timeout(Some(GMEMD_TIMEOUT)).map(|()| s))
        .map_err(|source| LaunchError::Lease {
            vm: vm_name.clone(),
            source: ClientError::Connect {
                path: opts.socket.clone(),
                source,
            },
        })?;
    let mut lease = Client::handshake(stream, Some(opts.vm.clone())).map_err(|source| {
        match (source.errno(), source.message()) {
            (Some(libc::EBUSY), Some(message)) => LaunchError::AlreadyRunning {
                vm: vm_name.clone(),
                message: message.to_owned(),
            },
            _ => LaunchError::Lease {
                vm: vm_name.clone(),
                source,
            },
        }
    })?;
    let lease_id = lease.lease().expect("a VM handshake opens a lease");
    let (ram, info) = lease
        .create_or_open(file, opts.memory, opts.kind)
        .map_err(|source| LaunchError::Memory {
            file: file.clone(),
            source,
        })?;
    let mut bindings = Vec::new();
    for (slot, range) in (MAIN_SLOT..).zip(vmm.ram()) {
        let bind = BindRequest::new(slot, range.gpa, file.clone(), range.offset, range.size);
        lease.bind(&bind).map_err(|source| LaunchError::Bind {
            vm: vm_name.clone(),
            file: file.clone(),
            gpa: range.gpa.0,
            offset: range.offset,
            source,
        })?;
        bindings.push(BindingRecord {
            slot,
            range: *range,
        });
    }
    // The default device confirms QEMU's memory table; cloud-hypervisor
    // gets none (its layout is checked by the tests instead).
    let devices = match vmm {
        VmmCommand::Qemu { .. } => {
            crate::launch::devices::set_up(&mut lease, &opts.disks, opts.vhost_device)?
        }
        VmmCommand::Ch { .. } => Vec::new(),
    };
    log::info!(
        "VM {vm_name}: lease {lease_id}, {} {file} ({}), bindings {bindings:?}",
        if info.created { "created" } else { "reopened" },
        format_size(info.size)
    );

    let control = ControlServer::bind(control_path)?;
    let signals = block_forwarded_signals()?;
    let lease_fd = lease
        .stream()
        .as_fd()
        .try_clone_to_owned()
        .map_err(LaunchError::Dup)?;
    let mut args = vmm.user_args().to_vec();
    match vmm {
        VmmCommand::Qemu { .. } => {
            args.extend(
                AddedOptions {
                    size: opts.memory,
                    max_memory: opts.max_memory,
                    slots,
                    ram_fd: RAM_FD,
                    qmp: monitor,
                    dimms: &[],
                    incoming: false,
                }
                .to_args(),
            );
            args.extend(crate::launch::devices::qemu_args(&devices));
        }
        VmmCommand::Ch { .. } => {
            // A socket left by a killed cloud-hypervisor is no obstacle: it
            // takes the path over once its `PATH.lock` is free.
            args.extend(ch::command::added_args(
                opts.memory,
                opts.kind,
                RAM_FD,
                monitor,
            ));
        }
    }
    log::debug!("starting {} {args:?}", vmm.program().display());
    let child = spawn(SpawnSpec {
        program: vmm.program().to_owned(),
        args,
        fds: vec![(lease_fd, LEASE_FD), (ram, RAM_FD)],
        stdio: None,
        process_group: None,
    })?;
    let supervisor = Supervisor::new(vm_name.clone(), vmm.kind(), child, signals, control)?;
    let process = supervisor.current().id();
    // gmemd shows the VMM, not this launcher, as the lease's process.
    let at = LEASE_FD.unsigned_abs();
    if let Err(source) = lease.handoff(supervisor.current().pidfd().as_fd(), at) {
        supervisor.kill();
        return Err(LaunchError::Handoff {
            lease: lease_id,
            pid: process.pid,
            source,
        });
    }
    let record = VmRecord {
        version: RECORD_VERSION,
        vm: vm_name.clone(),
        uuid: opts.vm.uuid,
        lease: lease_id,
        launcher: ProcessId::current(),
        control: control_path.to_owned(),
        vmm: VmmRecord {
            kind: vmm.kind(),
            process,
            generation: 0,
            program: vmm.program().to_owned(),
            args: vmm.user_args().to_vec(),
            monitor: monitor.to_owned(),
            machine: vmm.machine(),
        },
        memory: MemoryRecord {
            file: file.clone(),
            size: opts.memory,
            kind: opts.kind,
            max_memory: opts.max_memory,
            slots,
            bindings,
        },
        dimms: Vec::new(),
        devices,
    };
    if let Err(e) = opts.run_dir.save(&record) {
        // Without a record nobody could upgrade or hotplug this VMM.
        supervisor.kill();
        return Err(e.into());
    }
    Ok((supervisor.holding(lease), record))
}

/// Removes the VM's record, sockets and lock once its last QEMU has
/// exited, unless a newer launcher has taken the VM over since.
fn cleanup(run_dir: &RunDir, vm: &Name) {
    let lock = match run_dir.lock(vm, LOCK_TIMEOUT) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("{e}; cleaning up anyway");
            None
        }
    };
    let Ok(record) = run_dir.load(vm) else {
        return;
    };
    if record.launcher != ProcessId::current() {
        return;
    }
    let mut leftovers = vec![
        record.vmm.monitor.clone(),
        next_qmp_path(&record.vmm.monitor, record.vmm.generation + 1),
        run_dir.migration(vm),
    ];
    if record.vmm.kind == VmmKind::CloudHypervisor {
        // cloud-hypervisor locks its API socket with `PATH.lock`, left behind
        // by each generation (an upgrade target started at `next_qmp_path`).
        let sockets = (1..=record.vmm.generation + 1)
            .map(|g| next_qmp_path(&record.vmm.monitor, g))
            .chain([record.vmm.monitor.clone()]);
        leftovers.extend(sockets.map(|socket| {
            let mut lock = socket.into_os_string();
            lock.push(".lock");
            PathBuf::from(lock)
        }));
    }
    for path in leftovers {
        let _ = std::fs::remove_file(path);
    }
    run_dir.remove(vm);
    if let Some(lock) = lock {
        lock.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LaunchOptions {
        LaunchOptions {
            socket: "/nonexistent/gmemd.sock".into(),
            run_dir: RunDir::new("/nonexistent/vms"),
            vm: VmId::from_name(Name::new("vm").unwrap()),
            memory: 512 << 20,
            kind: MemoryKind::Memfd,
            file: None,
            max_memory: None,
            slots: None,
            qmp: None,
            disks: Vec::new(),
            vhost_device: false,
            command: vec!["qemu-system-x86_64".into(), "-M".into(), "q35".into()],
        }
    }

    #[test]
    fn options_are_checked_before_anything_starts() {
        let (vmm, slots) = opts().check().unwrap();
        assert_eq!((vmm.machine().as_str(), slots), ("q35", 0));
        let o = LaunchOptions {
            max_memory: Some(2 << 30),
            ..opts()
        };
        assert_eq!(o.check().unwrap().1, DEFAULT_SLOTS);

        let cases: Vec<(LaunchOptions, &str)> = vec![
            (
                LaunchOptions {
                    kind: MemoryKind::Secret,
                    ..opts()
                },
                "ENXIO",
            ),
            (
                LaunchOptions {
                    kind: MemoryKind::Hugetlb2M,
                    memory: 3 << 20,
                    ..opts()
                },
                "not a multiple of the hugetlb-2m page size",
            ),
            (
                LaunchOptions {
                    slots: Some(2),
                    ..opts()
                },
                "--slots needs --max-memory",
            ),
            (
                LaunchOptions {
                    max_memory: Some(256 << 20),
                    ..opts()
                },
                "must exceed",
            ),
            (
                LaunchOptions {
                    max_memory: Some(1 << 30),
                    slots: Some(300),
                    ..opts()
                },
                "--slots must be",
            ),
            (
                LaunchOptions {
                    command: vec!["qemu".into(), "-m".into(), "1G".into()],
                    ..opts()
                },
                "sets guest memory",
            ),
            (
                LaunchOptions {
                    command: vec![],
                    ..opts()
                },
                "no QEMU command",
            ),
        ];
        for (o, want) in cases {
            let err = o.check().unwrap_err();
            assert!(err.to_string().contains(want), "{err} vs {want}");
        }
    }

    #[test]
    fn nothing_is_left_behind_when_gmemd_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let o = LaunchOptions {
            run_dir: RunDir::new(dir.path().join("vms")),
            socket: dir.path().join("absent.sock"),
            ..opts()
        };
        let err = launch(&o, |_| panic!("not started")).unwrap_err();
        assert!(matches!(err, LaunchError::Lease { .. }), "{err}");
        // No record, no control socket, no lock file: nothing at all.
        let left: Vec<_> = std::fs::read_dir(o.run_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
