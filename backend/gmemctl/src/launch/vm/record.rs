//! The runtime record of a launched VM (`RUN_DIR/NAME.json`) and the errors
//! of the run directory that holds it ([`super::run_dir`]).
//!
//! `gmemctl launch` writes the record once QEMU runs; `upgrade`, `hotplug`
//! and `unplug` read it to find QEMU (pid + start time), its QMP socket, the
//! fd numbers of the lease and the memory inside it, the QEMU command line
//! and the memory files with their layout, and write it back.

use std::path::PathBuf;
use std::time::Duration;

use gmem_protocol::wire::{LeaseId, MemoryKind, Name, Uuid, VmId};
use serde::{Deserialize, Serialize};

use crate::launch::process::ProcessId;
use crate::launch::qemu::layout::RamRange;
use crate::launch::vmm::VmmKind;

/// Format version of the record file.
pub const RECORD_VERSION: u32 = 1;
/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors of the run directory and records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The run directory cannot be created.
    #[error("cannot create the run directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No record: the VM was not launched by gmemctl here, or it ended.
    #[error("VM {vm} is not running under gmemctl launch (no record {path})")]
    NotFound {
        /// The VM name.
        vm: Name,
        /// The record path.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record of this version.
    #[error("{path} is not a gmemctl VM record")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record with values that do not parse back.
    #[error("{path}: invalid {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which field.
        what: &'static str,
    },
    /// Writing failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket path too long for `sun_path`.
    #[error(
        "socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a unix socket address \
         holds (use a shorter --run-dir or --qmp)"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// Locking failed.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another gmemctl holds the VM's lock.
    #[error("another gmemctl is operating on VM {vm} (lock {path} held for {timeout:?})")]
    Busy {
        /// The VM name.
        vm: Name,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A binding QEMU uses: a memslot of the VM in gmemd's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// Slot in gmemd's ledger.
    pub slot: u32,
    /// Where.
    #[serde(flatten)]
    pub range: RamRange,
}

/// The running VMM process (QEMU or cloud-hypervisor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmRecord {
    /// Which VMM it is (records written before cloud-hypervisor support
    /// have none: QEMU).
    #[serde(default)]
    pub kind: VmmKind,
    /// Its identity.
    pub process: ProcessId,
    /// 0 for the launched VMM, +1 per upgrade.
    pub generation: u32,
    /// The binary.
    pub program: PathBuf,
    /// The user's arguments (without what gmemctl adds).
    pub args: Vec<String>,
    /// gmemctl's socket to it: QEMU's QMP monitor, cloud-hypervisor's API
    /// socket (`qmp` in records of earlier gmemctl versions).
    #[serde(alias = "qmp")]
    pub monitor: PathBuf,
    /// Machine type (for the layout; `cloud-hypervisor` for it).
    pub machine: String,
}

/// Main RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// gmemd memory file.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub file: Name,
    /// Bytes.
    pub size: u64,
    /// Memory kind.
    #[serde(with = "kind_serde")]
    pub kind: MemoryKind,
    /// `maxmem` of `-m`, if hotplug is possible.
    pub max_memory: Option<u64>,
    /// `slots` of `-m`.
    pub slots: u32,
    /// The bindings of the file.
    pub bindings: Vec<BindingRecord>,
}

/// A hot-plugged DIMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimmRecord {
    /// QEMU device id (the backend is `gmem-<id>`).
    pub id: String,
    /// gmemd memory file.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub file: Name,
    /// Bytes.
    pub size: u64,
    /// Memory kind.
    #[serde(with = "kind_serde")]
    pub kind: MemoryKind,
    /// The memory file's fd number inside QEMU.
    pub qemu_fd: i32,
    /// The QMP fd set holding that fd (hot-plugged), or none (inherited at start).
    pub fdset: Option<u64>,
    /// `slot` property of the pc-dimm.
    pub dimm_slot: u32,
    /// Guest-physical address.
    pub addr: u64,
    /// Slot of the binding in gmemd's ledger.
    pub slot: u32,
}

/// Everything gmemctl knows about a launched VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// VM name.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub vm: Name,
    /// VM UUID.
    #[serde(with = "crate::launch::vm::serde_fields::text")]
    pub uuid: Uuid,
    /// gmemd lease id.
    #[serde(with = "crate::launch::vm::serde_fields::lease")]
    pub lease: LeaseId,
    /// The `gmemctl launch` process supervising the VMM.
    pub launcher: ProcessId,
    /// Its control socket.
    pub control: PathBuf,
    /// The VMM process serving the VM now (`qemu` in records of earlier
    /// gmemctl versions).
    #[serde(alias = "qemu")]
    pub vmm: VmmRecord,
    /// Main RAM.
    pub memory: MemoryRecord,
    /// Hot-plugged DIMMs.
    pub dimms: Vec<DimmRecord>,
    /// gmemd's vhost-user devices (disks) QEMU has.
    #[serde(default)]
    pub devices: Vec<crate::launch::devices::DeviceRecord>,
}

impl VmRecord {
    /// The VM identity.
    pub fn vm_id(&self) -> VmId {
        VmId {
            uuid: self.uuid,
            name: self.vm.clone(),
        }
    }
}

mod kind_serde {
    use gmem_protocol::wire::MemoryKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &MemoryKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MemoryKind, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::vm::run_dir::RunDir;

    use gmem_protocol::wire::GuestAddress;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn record(vm: &str) -> VmRecord {
        VmRecord {
            version: RECORD_VERSION,
            vm: name(vm),
            uuid: Uuid::from_name(vm),
            lease: LeaseId::new(3).unwrap(),
            launcher: ProcessId {
                pid: 10,
                start_time: 20,
            },
            control: "/run/x.ctl".into(),
            vmm: VmmRecord {
                kind: VmmKind::Qemu,
                process: ProcessId {
                    pid: 11,
                    start_time: 21,
                },
                generation: 0,
                program: "qemu-system-x86_64".into(),
                args: vec!["-machine".into(), "q35".into()],
                monitor: "/run/x.qmp".into(),
                machine: "q35".into(),
            },
            memory: MemoryRecord {
                file: name(&format!("{vm}.ram")),
                size: 1 << 30,
                kind: MemoryKind::Hugetlb2M,
                max_memory: Some(4 << 30),
                slots: 4,
                bindings: vec![BindingRecord {
                    slot: 0,
                    range: RamRange {
                        gpa: GuestAddress(0),
                        offset: 0,
                        size: 1 << 30,
                    },
                }],
            },
            dimms: vec![DimmRecord {
                id: "dimm0".into(),
                file: name(&format!("{vm}.dimm0")),
                size: 128 << 20,
                kind: MemoryKind::Memfd,
                qemu_fd: 33,
                fdset: Some(0),
                dimm_slot: 0,
                addr: 0x1_0000_0000,
                slot: 16,
            }],
            devices: vec![crate::launch::devices::DeviceRecord {
                disk: Some("scratch".into()),
                path: "/run/gmemd/vhost/d0.sock".into(),
            }],
        }
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("vms"));
        let r = record("vm-a");
        run.save(&r).unwrap();
        assert_eq!(run.load(&name("vm-a")).unwrap(), r);
        let text = std::fs::read_to_string(run.record_path(&name("vm-a"))).unwrap();
        assert!(text.contains("\"kind\": \"hugetlb-2m\""), "{text}");
        assert!(text.contains("\"gpa\": 0"), "{text}");
        assert_eq!(r.vm_id(), VmId::from_name(name("vm-a")));
        run.remove(&name("vm-a"));
        assert!(matches!(
            run.load(&name("vm-a")),
            Err(RecordError::NotFound { .. })
        ));
        std::fs::write(run.record_path(&name("bad")), "{}").unwrap();
        assert!(matches!(
            run.load(&name("bad")),
            Err(RecordError::Parse { .. })
        ));
        // A record of an earlier gmemctl (`qemu`, `qmp`, no kind) still loads.
        let old = text
            .replace("\"vmm\"", "\"qemu\"")
            .replace("\"monitor\"", "\"qmp\"")
            .replace("\"kind\": \"qemu\",", "");
        assert!(!old.contains("\"vmm\""), "{old}");
        std::fs::write(run.record_path(&name("vm-a")), old).unwrap();
        assert_eq!(run.load(&name("vm-a")).unwrap(), r);
        run.remove(&name("vm-a"));
        // A record under the wrong name is not that VM's.
        run.save(&record("vm-b")).unwrap();
        std::fs::rename(
            run.record_path(&name("vm-b")),
            run.record_path(&name("vm-c")),
        )
        .unwrap();
        assert!(matches!(
            run.load(&name("vm-c")),
            Err(RecordError::Invalid { .. })
        ));
    }
}
