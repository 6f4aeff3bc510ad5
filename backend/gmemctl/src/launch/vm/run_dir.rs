//! The run directory: VM records, locks and sockets.
//!
//! Every change to a VM's record happens under `RUN_DIR/NAME.lock`
//! (`flock`), so two gmemctl commands never drive one VM at once. The run
//! directory defaults to `vms/` beside gmemd's socket, which keeps each
//! daemon's VMs apart. Unix socket paths (QMP, the launcher's control
//! socket, the migration socket) must fit in 107 bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gmem_protocol::wire::Name;
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::launch::vm::record::{RecordError, VmRecord, MAX_SOCKET_PATH, RECORD_VERSION};

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

/// Where the upgrade target of `generation` listens for QMP until it takes
/// the VM's path (by rename, once the old QEMU has exited).
///
/// Each generation needs a name of its own: QEMU unlinks the path it bound
/// when it exits, so a reused name would remove a later QEMU's socket.
pub fn next_qmp_path(qmp: &Path, generation: u32) -> PathBuf {
    let mut path = qmp.as_os_str().to_owned();
    path.push(format!(".g{generation}"));
    PathBuf::from(path)
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

    /// `NAME.api`: cloud-hypervisor's API socket.
    pub fn api(&self, vm: &Name) -> PathBuf {
        self.file(vm, "api")
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

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
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
    fn next_qmp_path_appends() {
        assert_eq!(
            next_qmp_path(Path::new("/run/vm.qmp"), 3),
            Path::new("/run/vm.qmp.g3")
        );
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
