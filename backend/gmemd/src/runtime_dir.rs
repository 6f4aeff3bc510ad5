//! gmemd's runtime and state directories must be its own: a directory
//! another user made first (`/tmp/gmemd-UID` is guessable) or may write
//! into would let that user put their own socket in gmemd's place and
//! receive its clients' HELLOs. The socket itself stays 0666 (PROTOCOL
//! §3); the directory is what is checked.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// It cannot be made or looked at.
    #[error("cannot create or inspect {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Not a directory (a symlink, say).
    #[error("{path} is not a directory; remove it, or use another (gmemd --state-dir, gmemctl --socket)")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Owned by someone else.
    #[error(
        "{path} belongs to uid {owner}, not to gmemd's uid {uid}: another user may have made \
         it to catch gmemd's clients; remove it, or use another (gmemd --state-dir, gmemctl --socket)"
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// gmemd's uid.
        uid: u32,
    },
    /// Others may write into it.
    #[error(
        "{path} is writable by group or others (mode {mode:o}): they could replace gmemd's \
         socket; `chmod go-w {path}`, or use another directory (gmemd --state-dir, gmemctl --socket)"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// Makes `dir` (mode 0700) if it is missing, and checks that it is a
/// directory owned by gmemd's uid that nobody else may write into.
///
/// # Errors
/// [`RuntimeDirError`], saying what to fix.
pub fn prepare(dir: &Path) -> Result<(), RuntimeDirError> {
    let io_err = |source| RuntimeDirError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    check(dir, &meta, rustix::process::geteuid().as_raw())
}

/// A client's check of the default socket's directory before it talks to
/// whatever listens there: it must be a directory of the client's own uid
/// or root's that nobody else may write into. A missing directory is fine
/// (connecting then fails on its own).
///
/// # Errors
/// [`RuntimeDirError`], saying what is wrong.
pub fn check_trusted(dir: &Path) -> Result<(), RuntimeDirError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RuntimeDirError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let own = rustix::process::geteuid().as_raw();
    let owner = if meta.uid() == 0 { 0 } else { own };
    check(dir, &meta, owner)
}

fn check(dir: &Path, meta: &std::fs::Metadata, uid: u32) -> Result<(), RuntimeDirError> {
    if !meta.is_dir() {
        return Err(RuntimeDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    if meta.uid() != uid {
        return Err(RuntimeDirError::NotOwned {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(RuntimeDirError::Writable {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_fresh_directory_is_private_and_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Again: an existing own directory is fine.
        prepare(&dir).unwrap();
    }

    #[test]
    fn writable_foreign_and_symlinked_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        prepare(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&dir).unwrap_err();
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        let other = meta.uid() + 1;
        let err = check(&dir, &meta, other).unwrap_err();
        assert!(matches!(err, RuntimeDirError::NotOwned { .. }), "{err}");
        // A client trusts its own directory, and nobody else's.
        check_trusted(&dir).unwrap();
        check_trusted(&tmp.path().join("missing")).unwrap();
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            prepare(&link).unwrap_err(),
            RuntimeDirError::NotADirectory { .. }
        ));
    }
}
