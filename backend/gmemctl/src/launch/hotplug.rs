//! `gmemctl hotplug` and `unplug`: gmemd memory plugged into a running QEMU
//! as a `pc-dimm`, and taken out again.
//!
//! Plugging: a new memory file from gmemd (on the VM's own lease, taken
//! from QEMU), handed to QEMU with QMP `add-fd` (`SCM_RIGHTS`), a
//! `memory-backend-file` on `/proc/self/fd/<that fd>,share=on`, a `pc-dimm`
//! on it, and a binding at the address QEMU chose. The guest sees the
//! memory through ACPI; Linux onlines it only with
//! `memhp_default_state=online` (or `online_movable`).
//!
//! Unplugging needs the guest's help: QEMU asks it to eject the DIMM and
//! reports `DEVICE_DELETED` once it did. Linux can offline hot-plugged
//! memory only if it was onlined movable (`memhp_default_state=
//! online_movable`); otherwise the request stays pending and `unplug`
//! reports that after its timeout.

use std::os::fd::{AsFd, RawFd};
use std::time::{Duration, Instant};

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind, Name};
use gmem_protocol::ClientError;
use serde::Serialize;
use serde_json::json;

use crate::launch::qemu::cmdline::{check_kind, dimm_backend_id, fd_path, KindError};
use crate::launch::qemu::DIMM_SLOT_BASE;
use crate::launch::vm::attach::{attach, AttachError};
use crate::launch::vm::record::{DimmRecord, RecordError};
use crate::launch::vm::run_dir::RunDir;
use crate::launch::vmm::VmmKind;
use crate::qmp::{QmpClient, QmpError};

/// Errors of hotplug and unplug.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Finding the VM.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The VM runs under cloud-hypervisor.
    #[error(
        "VM {vm} runs under cloud-hypervisor, which cannot hot-plug gmemd memory: its ACPI \
         and virtio-mem hotplug only add memory it allocates itself, never a given file"
    )]
    CloudHypervisor {
        /// The VM.
        vm: Name,
    },
    /// A memory kind QEMU cannot map.
    #[error(transparent)]
    Kind(#[from] KindError),
    /// The VM has no hotplug slots.
    #[error("VM {0} was launched without --max-memory: it has no memory hotplug slots")]
    NoHotplug(Name),
    /// Every slot is used.
    #[error("VM {vm} has all its {slots} memory slots in use")]
    SlotsFull {
        /// The VM.
        vm: Name,
        /// Its slots.
        slots: u32,
    },
    /// A DIMM id QEMU would not take.
    #[error("invalid DIMM id {0:?}: use a letter, then letters, digits, '-' or '_' (at most 32)")]
    BadId(String),
    /// The id is in use.
    #[error("VM {vm} already has a DIMM {id}")]
    IdTaken {
        /// The VM.
        vm: Name,
        /// The id.
        id: String,
    },
    /// The default file name would be invalid.
    #[error("memory file name for DIMM {0} is not a valid gmemd name (use --file)")]
    FileName(String),
    /// Creating the memory file failed.
    #[error("cannot get memory file {file} from gmemd")]
    Memory {
        /// The file.
        file: Name,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// A QMP command failed.
    #[error("QMP {command} failed")]
    Qmp {
        /// The command.
        command: &'static str,
        /// Cause.
        #[source]
        source: QmpError,
    },
    /// QEMU does not list the DIMM after plugging it.
    #[error("QEMU does not list DIMM {0} after device_add")]
    NotListed(String),
    /// Recording the binding failed (QEMU was asked to unplug the DIMM).
    #[error("cannot bind {file} at gpa {gpa:#x}; the DIMM was unplugged again")]
    Bind {
        /// The file.
        file: Name,
        /// Guest-physical address.
        gpa: u64,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// No such DIMM in the record.
    #[error("VM {vm} has no DIMM {id} plugged by gmemctl")]
    NoSuchDimm {
        /// The VM.
        vm: Name,
        /// The id.
        id: String,
    },
    /// The guest did not let the DIMM go.
    #[error(
        "the guest did not release DIMM {id} within {timeout:?}: Linux can offline hot-plugged \
         memory only if it onlined it movable (boot with memhp_default_state=online_movable); \
         QEMU keeps the removal request pending"
    )]
    NotReleased {
        /// The id.
        id: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Removing the binding or the file failed.
    #[error("cannot {what} {file} in gmemd")]
    Cleanup {
        /// unbind or destroy.
        what: &'static str,
        /// The file.
        file: Name,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The record.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What to plug.
#[derive(Debug, Clone)]
pub struct HotplugOptions {
    /// Where the VM's record lives.
    pub run_dir: RunDir,
    /// The VM.
    pub vm: Name,
    /// Bytes.
    pub size: u64,
    /// Memory kind.
    pub kind: MemoryKind,
    /// DIMM id; default the first free `dimmN`.
    pub id: Option<String>,
    /// Memory file; default `<vm>.<id>`.
    pub file: Option<Name>,
    /// Bound on each step.
    pub timeout: Duration,
}

/// A plugged DIMM.
#[derive(Debug, Clone, Serialize)]
pub struct HotplugReport {
    /// The VM.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub vm: Name,
    /// DIMM id.
    pub id: String,
    /// Memory file.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub file: Name,
    /// Bytes.
    pub size: u64,
    /// Whether the file was created (else an existing one was reused).
    pub created: bool,
    /// Guest-physical address.
    pub addr: u64,
    /// pc-dimm slot.
    pub dimm_slot: u32,
    /// gmemd binding slot.
    pub slot: u32,
    /// QMP add-fd + object-add + device_add, ms.
    pub qmp_ms: f64,
    /// The whole command, ms.
    pub elapsed_ms: f64,
}

/// What to unplug.
#[derive(Debug, Clone)]
pub struct UnplugOptions {
    /// Where the VM's record lives.
    pub run_dir: RunDir,
    /// The VM.
    pub vm: Name,
    /// DIMM id.
    pub id: String,
    /// Keep the memory file in gmemd (else it is destroyed).
    pub keep: bool,
    /// Bound on each step, including the guest's release.
    pub timeout: Duration,
}

/// An unplugged DIMM.
#[derive(Debug, Clone, Serialize)]
pub struct UnplugReport {
    /// The VM.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub vm: Name,
    /// DIMM id.
    pub id: String,
    /// Memory file.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub file: Name,
    /// Whether the file was destroyed.
    pub destroyed: bool,
    /// From device_del to DEVICE_DELETED, ms.
    pub guest_ms: f64,
    /// The whole command, ms.
    pub elapsed_ms: f64,
}

fn qmp_err(command: &'static str) -> impl Fn(QmpError) -> HotplugError {
    move |source| HotplugError::Qmp { command, source }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// QEMU ids: a letter, then letters, digits, `-`, `_` (and `.`, which we
/// leave out to keep file names plain).
fn valid_id(id: &str) -> bool {
    id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Plugs a new gmemd memory file into the VM as a DIMM.
///
/// # Errors
/// [`HotplugError`]; a failure after `add-fd` takes QEMU's side back.
pub fn hotplug(opts: &HotplugOptions) -> Result<HotplugReport, HotplugError> {
    let t0 = Instant::now();
    check_kind(opts.kind)?;
    let mut att = attach(&opts.run_dir, &opts.vm, opts.timeout)?;
    let vm = att.record.vm.clone();
    if att.record.vmm.kind == VmmKind::CloudHypervisor {
        return Err(HotplugError::CloudHypervisor { vm });
    }
    let slots = att.record.memory.slots;
    if att.record.memory.max_memory.is_none() {
        return Err(HotplugError::NoHotplug(vm));
    }
    if att.record.dimms.len() >= usize::try_from(slots).unwrap_or(usize::MAX) {
        return Err(HotplugError::SlotsFull { vm, slots });
    }
    let in_use = |id: &str| att.record.dimms.iter().any(|d| d.id == id);
    let id = match &opts.id {
        Some(id) if !valid_id(id) => return Err(HotplugError::BadId(id.clone())),
        Some(id) if in_use(id) => return Err(HotplugError::IdTaken { vm, id: id.clone() }),
        Some(id) => id.clone(),
        None => (0..)
            .map(|n| format!("dimm{n}"))
            .find(|id| !in_use(id))
            .expect("a free id"),
    };
    let file = match &opts.file {
        Some(f) => f.clone(),
        None => Name::new(&format!("{vm}.{id}")).map_err(|_| HotplugError::FileName(id.clone()))?,
    };

    let mut lease = att.lease(opts.timeout)?;
    let (fd, info) = lease
        .create_or_open(&file, opts.size, opts.kind)
        .map_err(|source| HotplugError::Memory {
            file: file.clone(),
            source,
        })?;
    let mut qmp = att.qmp(opts.timeout)?;
    let t_qmp = Instant::now();
    let added = qmp
        .add_fd_opaque(fd.as_fd(), None, Some(&format!("gmem:{file}")))
        .map_err(qmp_err("add-fd"))?;
    let qemu_fd = RawFd::try_from(added.fd).unwrap_or(-1);
    let backend = dimm_backend_id(&id);
    let object = json!({
        "qom-type": "memory-backend-file",
        "id": backend,
        "size": opts.size,
        "mem-path": fd_path(qemu_fd),
        "share": true,
    });
    if let Err(e) = qmp.object_add(object) {
        let _ = qmp.remove_fd(added.fdset_id, None);
        return Err(qmp_err("object-add")(e));
    }
    let device = json!({"driver": "pc-dimm", "id": id, "memdev": backend});
    if let Err(e) = qmp.device_add(device) {
        let _ = qmp.object_del(&backend);
        let _ = qmp.remove_fd(added.fdset_id, None);
        return Err(qmp_err("device_add")(e));
    }
    let devices = qmp
        .query_memory_devices()
        .map_err(qmp_err("query-memory-devices"))?;
    let device = devices
        .iter()
        .find(|d| d.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| HotplugError::NotListed(id.clone()))?;
    let addr = device
        .addr
        .ok_or_else(|| HotplugError::NotListed(id.clone()))?;
    let dimm_slot = device
        .data
        .get("slot")
        .and_then(serde_json::Value::as_u64)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| HotplugError::NotListed(id.clone()))?;
    let qmp_ms = ms(t_qmp.elapsed());

    let slot = DIMM_SLOT_BASE + dimm_slot;
    let bind = BindRequest::new(slot, GuestAddress(addr), file.clone(), 0, opts.size);
    if let Err(source) = lease.bind(&bind) {
        // Not recorded means not plugged: take it back (the guest must
        // agree; see the module doc).
        let _ = qmp.device_del(&id);
        return Err(HotplugError::Bind {
            file: file.clone(),
            gpa: addr,
            source,
        });
    }
    att.record.dimms.push(DimmRecord {
        id: id.clone(),
        file: file.clone(),
        size: opts.size,
        kind: opts.kind,
        qemu_fd,
        fdset: Some(added.fdset_id),
        dimm_slot,
        addr,
        slot,
    });
    att.save()?;
    Ok(HotplugReport {
        vm,
        id,
        file,
        size: opts.size,
        created: info.created,
        addr,
        dimm_slot,
        slot,
        qmp_ms,
        elapsed_ms: ms(t0.elapsed()),
    })
}

/// Unplugs a DIMM plugged by [`hotplug`], unbinds it and (unless `keep`)
/// destroys its memory file.
///
/// # Errors
/// [`HotplugError`], notably [`HotplugError::NotReleased`].
pub fn unplug(opts: &UnplugOptions) -> Result<UnplugReport, HotplugError> {
    let t0 = Instant::now();
    let mut att = attach(&opts.run_dir, &opts.vm, opts.timeout)?;
    let vm = att.record.vm.clone();
    if att.record.vmm.kind == VmmKind::CloudHypervisor {
        return Err(HotplugError::CloudHypervisor { vm });
    }
    let index = att
        .record
        .dimms
        .iter()
        .position(|d| d.id == opts.id)
        .ok_or_else(|| HotplugError::NoSuchDimm {
            vm: vm.clone(),
            id: opts.id.clone(),
        })?;
    let dimm = att.record.dimms[index].clone();
    let mut qmp = att.qmp(opts.timeout)?;
    let t_guest = Instant::now();
    let listed = qmp
        .query_memory_devices()
        .map_err(qmp_err("query-memory-devices"))?
        .iter()
        .any(|d| d.id.as_deref() == Some(dimm.id.as_str()));
    // Not listed: an earlier unplug's request completed after it gave up.
    if listed {
        qmp.device_del(&dimm.id).map_err(qmp_err("device_del"))?;
        wait_deleted(&mut qmp, &dimm.id, opts.timeout)?;
    }
    let guest_ms = ms(t_guest.elapsed());
    if let Err(e) = qmp.object_del(&dimm_backend_id(&dimm.id)) {
        log::warn!("object-del {}: {e}", dimm_backend_id(&dimm.id));
    }
    if let Some(fdset) = dimm.fdset {
        if let Err(e) = qmp.remove_fd(fdset, None) {
            log::warn!("remove-fd {fdset}: {e}");
        }
    } else {
        log::info!(
            "QEMU keeps fd {} of {} (inherited at its start) until it exits",
            dimm.qemu_fd,
            dimm.file
        );
    }
    let mut lease = att.lease(opts.timeout)?;
    let cleanup = |what| {
        let file = dimm.file.clone();
        move |source| HotplugError::Cleanup { what, file, source }
    };
    match lease.unbind(dimm.slot) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::ENOENT) => {}
        Err(e) => return Err(cleanup("unbind")(e)),
    }
    if !opts.keep {
        lease.destroy(&dimm.file).map_err(cleanup("destroy"))?;
    }
    att.record.dimms.remove(index);
    att.save()?;
    Ok(UnplugReport {
        vm,
        id: dimm.id,
        file: dimm.file,
        destroyed: !opts.keep,
        guest_ms,
        elapsed_ms: ms(t0.elapsed()),
    })
}

fn wait_deleted(qmp: &mut QmpClient, id: &str, timeout: Duration) -> Result<(), HotplugError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match qmp.wait_event("DEVICE_DELETED", left) {
            Ok(event) if event.data.get("device").and_then(|d| d.as_str()) == Some(id) => {
                return Ok(())
            }
            Ok(_) => {}
            Err(QmpError::Timeout { .. }) => {
                return Err(HotplugError::NotReleased {
                    id: id.to_owned(),
                    timeout,
                })
            }
            Err(e) => return Err(qmp_err("device_del")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["dimm0", "a", "mem-1_x"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "0dimm", "-x", "a.b", "a,b", "a/b", &"x".repeat(33)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn kinds_and_missing_vms_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = HotplugOptions {
            run_dir: RunDir::new(dir.path()),
            vm: Name::new("vm").unwrap(),
            size: 128 << 20,
            kind: MemoryKind::Secret,
            id: None,
            file: None,
            timeout: Duration::from_secs(1),
        };
        let err = hotplug(&opts).unwrap_err();
        assert!(err.to_string().contains("ENXIO"), "{err}");
        opts.kind = MemoryKind::Memfd;
        let err = hotplug(&opts).unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        // A VM name is a `Name`: "../x" cannot even be asked for.
        assert!(Name::new("../x").is_err());
    }
}
