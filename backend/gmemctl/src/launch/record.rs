//! The runtime record of a launched VM, and the run directory that holds it.
//!
//! `gmemctl launch` writes `RUN_DIR/NAME.json` once QEMU runs; `upgrade`,
//! `hotplug` and `unplug` read it to find QEMU (pid + start time), its QMP
//! socket, the fd numbers of the lease and the memory inside it, the QEMU
//! command line and the memory files with their layout, and write it back.
//! Every change happens under `RUN_DIR/NAME.lock` (`flock`), so two gmemctl
//! commands never drive one VM at once.
//!
//! The run directory defaults to `vms/` beside gmemd's socket, which keeps
//! each daemon's VMs apart. Unix socket paths (QMP, the launcher's control
//! socket, the migration socket) must fit in 107 bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gmem_protocol::wire::{LeaseId, MemoryKind, Name, Uuid, VmId};
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::launch::layout::RamRange;
use crate::launch::process::ProcessId;

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

/// The running QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuRecord {
    /// Its identity.
    pub process: ProcessId,
    /// 0 for the launched QEMU, +1 per upgrade.
    pub generation: u32,
    /// The binary.
    pub program: PathBuf,
    /// The user's arguments (without what gmemctl adds).
    pub args: Vec<String>,
    /// gmemctl's QMP socket of this QEMU.
    pub qmp: PathBuf,
    /// Machine type (for the layout).
    pub machine: String,
}

/// Main RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// gmemd memory file.
    #[serde(with = "crate::launch::serde_fields::text")]
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
    #[serde(with = "crate::launch::serde_fields::text")]
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
    #[serde(with = "crate::launch::serde_fields::text")]
    pub vm: Name,
    /// VM UUID.
    #[serde(with = "crate::launch::serde_fields::text")]
    pub uuid: Uuid,
    /// gmemd lease id.
    #[serde(with = "crate::launch::serde_fields::lease")]
    pub lease: LeaseId,
    /// The `gmemctl launch` process supervising QEMU.
    pub launcher: ProcessId,
    /// Its control socket.
    pub control: PathBuf,
    /// The QEMU serving the VM now.
    pub qemu: QemuRecord,
    /// Main RAM.
    pub memory: MemoryRecord,
    /// Hot-plugged DIMMs.
    pub dimms: Vec<DimmRecord>,
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

/// Refuses paths that do not fit in a unix socket address.
///
/// # Errors
/// [`RecordError::PathTooLong`].
pub fn check_socket_path(path: &Path) -> Result<(), RecordError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(RecordError::PathTooLong {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The directory of VM records, locks and sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// A run directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunDir { dir: dir.into() }
    }

    /// The default for a daemon socket: `vms/` beside it.
    pub fn for_socket(socket: &Path) -> Self {
        let parent = socket.parent().unwrap_or(Path::new("."));
        Self::new(parent.join("vms"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates it (mode 0700) if needed.
    ///
    /// # Errors
    /// [`RecordError::CreateDir`].
    pub fn create(&self) -> Result<(), RecordError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| RecordError::CreateDir {
                path: self.dir.clone(),
                source,
            })
    }

    fn file(&self, vm: &Name, suffix: &str) -> PathBuf {
        self.dir.join(format!("{vm}.{suffix}"))
    }

    /// `NAME.json`.
    pub fn record_path(&self, vm: &Name) -> PathBuf {
        self.file(vm, "json")
    }

    /// `NAME.qmp`: the default QMP socket.
    pub fn qmp(&self, vm: &Name) -> PathBuf {
        self.file(vm, "qmp")
    }

    /// `NAME.ctl`: the launcher's control socket.
    pub fn control(&self, vm: &Name) -> PathBuf {
        self.file(vm, "ctl")
    }

    /// `NAME.mig`: the migration socket of an upgrade.
    pub fn migration(&self, vm: &Name) -> PathBuf {
        self.file(vm, "mig")
    }

    /// Takes the VM's lock, waiting up to `timeout` for another holder.
    ///
    /// The lock file may be removed by whoever holds it ([`VmLock::remove`]),
    /// so a lock is only taken on the file that is at the path once it is
    /// locked; a file unlinked while we waited for it is opened again.
    ///
    /// # Errors
    /// [`RecordError::Busy`], [`RecordError::Lock`].
    pub fn lock(&self, vm: &Name, timeout: Duration) -> Result<VmLock, RecordError> {
        self.create()?;
        let path = self.file(vm, "lock");
        let lock_err = |source: std::io::Error| RecordError::Lock {
            path: path.clone(),
            source,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(lock_err)?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let locked = rustix::fs::fstat(&file).map_err(|e| lock_err(e.into()))?;
                    let current = rustix::fs::stat(&path).ok();
                    if current
                        .is_some_and(|c| c.st_ino == locked.st_ino && c.st_dev == locked.st_dev)
                    {
                        return Ok(VmLock { file, path });
                    }
                    // Removed (or replaced) by its last holder: try again.
                }
                Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(RecordError::Busy {
                        vm: vm.clone(),
                        path,
                        timeout,
                    })
                }
                Err(e) => return Err(lock_err(e.into())),
            }
        }
    }

    /// Reads the VM's record.
    ///
    /// # Errors
    /// [`RecordError::NotFound`], [`RecordError::Read`], [`RecordError::Parse`].
    pub fn load(&self, vm: &Name) -> Result<VmRecord, RecordError> {
        let path = self.record_path(vm);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::NotFound {
                    vm: vm.clone(),
                    path,
                })
            }
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        let record: VmRecord =
            serde_json::from_str(&text).map_err(|source| RecordError::Parse {
                path: path.clone(),
                source,
            })?;
        if record.version != RECORD_VERSION || record.vm != *vm {
            return Err(RecordError::Invalid {
                path,
                what: "version or VM name",
            });
        }
        Ok(record)
    }

    /// Writes the record atomically (temp file + rename).
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub fn save(&self, record: &VmRecord) -> Result<(), RecordError> {
        self.create()?;
        let path = self.record_path(&record.vm);
        let tmp = self.file(&record.vm, "json.tmp");
        let write_err = |source| RecordError::Write {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(record).expect("records serialize");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.write_all(b"\n").map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)
    }

    /// Removes the record.
    pub fn remove(&self, vm: &Name) {
        let _ = std::fs::remove_file(self.record_path(vm));
    }
}

/// The VM's lock; released when dropped.
#[derive(Debug)]
pub struct VmLock {
    file: File,
    path: PathBuf,
}

impl VmLock {
    /// Releases the lock and removes its file, for when the VM is gone (or
    /// was never started): a later `lock` makes a new one.
    pub fn remove(self) {
        // Unlinked while still held: a waiter that then gets the old file
        // sees it is no longer at the path and opens the new one.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("removing {}: {e}", self.path.display());
        }
        drop(self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            qemu: QemuRecord {
                process: ProcessId {
                    pid: 11,
                    start_time: 21,
                },
                generation: 0,
                program: "qemu-system-x86_64".into(),
                args: vec!["-machine".into(), "q35".into()],
                qmp: "/run/x.qmp".into(),
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

    #[test]
    fn lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let held = run.lock(&name("vm-a"), Duration::ZERO).unwrap();
        let err = run
            .lock(&name("vm-a"), Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, RecordError::Busy { .. }), "{err}");
        run.lock(&name("vm-b"), Duration::ZERO).unwrap();
        drop(held);
        run.lock(&name("vm-a"), Duration::ZERO).unwrap();
    }

    #[test]
    fn a_removed_lock_is_made_again_and_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let vm = name("vm-a");
        let held = run.lock(&vm, Duration::ZERO).unwrap();
        let lock_file = dir.path().join("vm-a.lock");
        assert!(lock_file.exists());
        // A waiter opens the file now, then the holder removes it.
        let waiter = {
            let run = run.clone();
            let vm = vm.clone();
            std::thread::spawn(move || run.lock(&vm, Duration::from_secs(5)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(100));
        held.remove();
        let second = waiter.join().unwrap();
        // The waiter holds the lock on the file at the path, so a third
        // party is excluded, not handed the unlinked one.
        assert!(lock_file.exists());
        assert!(matches!(
            run.lock(&vm, Duration::from_millis(50)),
            Err(RecordError::Busy { .. })
        ));
        second.remove();
        assert!(!lock_file.exists());
    }

    #[test]
    fn paths() {
        let run = RunDir::for_socket(Path::new("/run/gmemd/gmemd.sock"));
        assert_eq!(run.path(), Path::new("/run/gmemd/vms"));
        assert_eq!(run.qmp(&name("vm")), Path::new("/run/gmemd/vms/vm.qmp"));
        assert_eq!(run.control(&name("vm")), Path::new("/run/gmemd/vms/vm.ctl"));
        assert_eq!(
            run.migration(&name("vm")),
            Path::new("/run/gmemd/vms/vm.mig")
        );
        check_socket_path(&run.qmp(&name("vm"))).unwrap();
        let long = PathBuf::from(format!("/{}", "x".repeat(MAX_SOCKET_PATH)));
        assert!(matches!(
            check_socket_path(&long),
            Err(RecordError::PathTooLong { .. })
        ));
    }
}
