//! A device's socket and its connections: a thread accepts frontends on
//! `d<id>.sock`; each connection gets a thread that asks the service
//! whether the peer may use the device, starts a fresh
//! [`VhostUserDaemon`] over the disk, and runs the [`filter`] between the
//! frontend and the daemon until the frontend hangs up.
//!
//! The daemon gets its end through a listener in a private directory
//! (mode 0700): `VhostUserDaemon` only takes a listener or a path, and
//! gmemd connects to it before anyone else could, then removes the path.
//!
//! Connections are not kept across gmemd restarts: QEMU reconnects
//! (`reconnect-ms`) to the same path, which the next gmemd serves again.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use log::{debug, error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::blk::{BlkBackend, Disk};
use super::filter::{self, MappedRegion, RegionJudge};
use super::{CallSender, DeviceCall, DeviceSpec};

/// Frontend connections one device serves at once; more are closed at
/// accept (a flood must not cost a thread each).
pub const MAX_CONNECTIONS: usize = 4;

/// Guest memory as the backend sees it.
type Memory = GuestMemoryMmap<<BlkBackend as VhostUserBackendMut>::Bitmap>;

/// Numbers device connections, for the log and the service's tables.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Serves device `spec` on `path` from now on (a thread of its own).
/// A stale socket at `path` (a previous gmemd's) is replaced.
///
/// # Errors
/// When the socket cannot be made.
pub fn serve(spec: &DeviceSpec, path: &Path, calls: CallSender) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join("private");
    std::fs::create_dir_all(&private)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    match std::fs::remove_file(path) {
        Ok(()) => debug!("replaced the stale socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Who may use it is decided per connection (the VM's principal or an
    // operator), as on gmemd's own socket.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let id = spec.id;
    std::thread::Builder::new()
        .name(format!("gmemd-d{id}"))
        .spawn(move || accept_loop(id, &listener, &private, &calls))?;
    info!("device d{id} listening on {}", path.display());
    Ok(())
}

fn accept_loop(id: u32, listener: &UnixListener, private: &Path, calls: &CallSender) {
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("device d{id}: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
        };
        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            warn!("device d{id}: {MAX_CONNECTIONS} connections already; one more closed");
            continue;
        }
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (live, calls, private) = (Arc::clone(&live), calls.clone(), private.to_owned());
        live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("gmemd-d{id}c{conn}"))
            .spawn(move || {
                if let Err(e) = run_connection(id, conn, stream, &calls, &private) {
                    warn!("device d{id} connection {conn}: {e}");
                }
                calls.send(DeviceCall::Gone { device: id, conn });
                live.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            error!("device d{id}: no thread for a connection: {e}");
        }
    }
}

/// Why a device connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer could not be identified.
    #[error("peer credentials: {0}")]
    Peer(io::Error),
    /// The service refused the peer.
    #[error("refused: {0}")]
    Refused(String),
    /// The disk could not be used.
    #[error("disk: {0}")]
    Disk(String),
    /// The backend daemon could not start.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// The private connection to the daemon failed.
    #[error("private connection: {0}")]
    Private(io::Error),
    /// The frontend broke the protocol.
    #[error("{0}")]
    Filter(#[from] filter::FilterError),
}

fn run_connection(
    id: u32,
    conn: u64,
    frontend: UnixStream,
    calls: &CallSender,
    private: &Path,
) -> Result<(), ConnectionError> {
    let peer = crate::peer::peer_of(&frontend).map_err(ConnectionError::Peer)?;
    let principal = crate::peer::principal_of(&frontend, peer);
    let grant = calls
        .ask(|reply| DeviceCall::Connect {
            device: id,
            conn,
            peer,
            principal,
            reply,
        })
        .map_err(ConnectionError::Refused)?;
    let disk = grant
        .disk
        .map(|fd| Disk::new(Arc::new(fd)))
        .transpose()
        .map_err(|e| ConnectionError::Disk(e.to_string()))?;
    let queues = usize::try_from(grant.queues).unwrap_or(1);
    let backend = BlkBackend::new(disk, &grant.serial, queues)
        .map_err(|e| ConnectionError::Disk(e.to_string()))?;
    let memory = GuestMemoryAtomic::new(Memory::new());
    let mut daemon = VhostUserDaemon::new(
        format!("gmemd-d{id}c{conn}-vu"),
        Arc::new(RwLock::new(backend)),
        memory,
    )
    .map_err(|e| ConnectionError::Daemon(e.to_string()))?;
    let backend_end = connect_privately(&mut daemon, &private.join(format!("c{conn}.sock")))?;
    let mut judge = ServiceJudge {
        device: id,
        conn,
        calls,
    };
    let result = filter::run(frontend, backend_end, &mut judge);
    daemon.request_shutdown();
    if let Err(e) = daemon.wait() {
        debug!("device d{id} connection {conn}: the backend ended with {e}");
    }
    match result {
        Ok(end) => {
            info!("device d{id} connection {conn} ended: {end:?}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives `daemon` a connection whose other end is returned.
fn connect_privately(
    daemon: &mut VhostUserDaemon<Arc<RwLock<BlkBackend>>>,
    path: &PathBuf,
) -> Result<UnixStream, ConnectionError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(ConnectionError::Private)?;
    let ours = UnixStream::connect(path);
    let _ = std::fs::remove_file(path);
    let ours = ours.map_err(ConnectionError::Private)?;
    let mut listener = Listener::from(listener);
    daemon
        .start(&mut listener)
        .map_err(|e| ConnectionError::Daemon(e.to_string()))?;
    Ok(ours)
}

/// Asks the service about each region, tells it each new table.
struct ServiceJudge<'a> {
    device: u32,
    conn: u64,
    calls: &'a CallSender,
}

impl RegionJudge for ServiceJudge<'_> {
    fn judge(&mut self, region: &MappedRegion) -> Result<(), String> {
        self.calls.ask(|reply| DeviceCall::Judge {
            device: self.device,
            region: region.clone(),
            reply,
        })
    }

    fn table_changed(&mut self, table: &[MappedRegion]) {
        self.calls.send(DeviceCall::Table {
            device: self.device,
            conn: self.conn,
            table: table.to_vec(),
        });
    }
}
