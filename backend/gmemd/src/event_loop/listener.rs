//! The listening socket: made in a directory that is gmemd's own, and
//! paused for a moment when gmemd has no fd left to accept with.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use log::info;

use super::DaemonError;

/// Makes the socket directory and binds the listener.
pub fn listen(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::runtime_dir::prepare(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_owned()));
        }
        info!("removing stale socket {}", path.display());
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    // Everyone may connect; SO_PEERCRED decides who is served, so a refused
    // uid gets a clear error instead of a bare EACCES.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bind_err)?;
    Ok(listener)
}
