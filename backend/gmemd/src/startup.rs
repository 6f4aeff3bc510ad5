//! Starting to serve: fresh, or taking over from a previous gmemd (after
//! its crash, a restart in place or an upgrade). The fds kept for gmemd
//! come from `LISTEN_FDS` (systemd's fd store, gmemd's keeper, or the exec
//! of a restart in place); the journal in the state dir says what they
//! are. Either alone is reported: files whose fd was not kept lost their
//! memory, fds the journal does not describe are closed.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use log::{info, warn};

use crate::config::Config;
use crate::event_loop::{DaemonError, EventLoop};
use crate::fdstore::{self, FdStore};
use crate::journal::record::Meta;
use crate::journal::{Journal, JournalError};
use crate::service::persist::{FdKeeper, Persistence};
use crate::service::Service;

/// Why gmemd cannot start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal is unusable (another gmemd, a newer format, I/O).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The fds handed over or the fd store cannot be read.
    #[error("cannot take the fds handed over to gmemd")]
    Fds(#[source] std::io::Error),
    /// The event loop cannot start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Starts serving on `socket` with state in `state_dir`: recovers what a
/// previous gmemd left, or starts fresh.
///
/// # Errors
/// [`StartError`].
pub fn start(config: Config, state_dir: &Path, socket: &Path) -> Result<EventLoop, StartError> {
    let mut fds = fdstore::listen_fds().map_err(StartError::Fds)?;
    let (journal, recovered) = Journal::open(state_dir)?;
    let mut store = FdStore::from_env().map_err(StartError::Fds)?;
    // Kept for gmemd: everything but a socket unit's socket, which systemd
    // passes to every start (a start after `systemctl stop` too) and holds
    // itself, not in the fd store.
    let kept = || {
        fds.iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| *name != fdstore::SOCKET_UNIT_NAME)
    };
    if let Some(store) = store.as_mut() {
        store.adopt(kept());
    }
    let took_over = kept().next().is_some();
    let listener = take_listener(&mut fds);
    let keeper = store.map(|s| Box::new(s) as Box<dyn FdKeeper>);
    let (mut event_loop, resumed) = if recovered.records > 0 || !fds.is_empty() {
        let recovery = Service::recover(config, journal, recovered, fds, keeper, took_over);
        let listener = match listener {
            Some(l) => l,
            None => crate::event_loop::listen(socket)?,
        };
        let next_sid = recovery.next_sid;
        let el = EventLoop::new(listener, socket, recovery.service)?;
        (el, Some((recovery.sessions, next_sid)))
    } else {
        let mut service = Service::new(config);
        let born = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        service.persist_with(Persistence::new(
            journal,
            keeper,
            Meta {
                born,
                ..Meta::default()
            },
        ));
        let listener = match listener {
            Some(l) => l,
            None => crate::event_loop::listen(socket)?,
        };
        (EventLoop::new(listener, socket, service)?, None)
    };
    event_loop.keep_listener();
    event_loop.serve_devices(state_dir.join("vhost"))?;
    if let Some((sessions, next_sid)) = resumed {
        event_loop.resume(sessions, next_sid);
    }
    event_loop.service_mut().notify_ready();
    info!(
        "serving on {} {:.1} ms after exec",
        socket.display(),
        since_exec().as_secs_f64() * 1000.0
    );
    Ok(event_loop)
}

static EXEC: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Notes when this process started (call first thing in `main`), for the
/// "serving again after" figure.
pub fn mark_exec() {
    EXEC.get_or_init(std::time::Instant::now);
}

fn since_exec() -> std::time::Duration {
    EXEC.get()
        .map_or_else(std::time::Duration::default, |t| t.elapsed())
}

/// The listening socket handed over, if any (named `listen` by gmemd,
/// `gmemd.socket` by a socket unit).
fn take_listener(fds: &mut Vec<(String, OwnedFd)>) -> Option<UnixListener> {
    let mut found = None;
    fds.retain_mut(|(name, fd)| {
        let is_listener = name == fdstore::LISTEN_NAME || name == fdstore::SOCKET_UNIT_NAME;
        if is_listener && found.is_none() {
            match fd.as_fd().try_clone_to_owned() {
                Ok(owned) => found = Some(UnixListener::from(owned)),
                Err(e) => warn!("handed-over listener {name}: {e}"),
            }
        }
        !is_listener
    });
    found
}
