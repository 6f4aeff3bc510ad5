//! Memory that outlives the gmemd process: its fds are kept by a file
//! descriptor store that outlives it, and handed back when it starts again.
//!
//! The store is systemd's (`FDSTORE=1`, `FileDescriptorStoreMax=`) when gmemd
//! runs as a `Type=notify` service, or gmemd's own [`keeper`] otherwise: a
//! parent process that speaks the same protocol and only holds fds. Either
//! way the serving gmemd sees the same contract:
//! - [`FdStore`] sends `sd_notify` messages to `$NOTIFY_SOCKET`: store an fd
//!   under a name, remove it, `READY=1`, `STATUS=`, `WATCHDOG=1`;
//! - [`listen_fds`] takes back what was stored (and any socket-activated
//!   listening socket) from `LISTEN_FDS`/`LISTEN_FDNAMES` at start.
//!
//! Names are short ids without `:` (see [`notify::valid_name`]): `listen`
//! for the listening socket gmemd bound itself ([`LISTEN_NAME`]), `f<N>` for
//! memory file N, `c<N>` for connection N. A socket from `gmemd.socket` comes
//! named [`SOCKET_UNIT_NAME`]; systemd holds it anyway, so it is not stored.
//!
//! Why not the `sd-notify` or `libsystemd` crates: the keeper needs the
//! receiving end of the protocol (credentials, `SCM_RIGHTS`), which neither
//! has, so the wire code lives here anyway and both ends are tested against
//! each other; `sd-notify` 0.5 has no abstract socket addresses and opens a
//! socket per message, and `libsystemd` 0.7 brings nix, nom, sha2, hmac,
//! uuid and serde for what is about 150 lines over `rustix`, which gmemd
//! already uses.

pub mod keeper;
mod listen;
pub mod notify;
pub mod place;

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::net::{socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

pub use listen::listen_fds;

/// The name of the listening socket gmemd bound itself and stores.
pub const LISTEN_NAME: &str = "listen";

/// The name systemd gives the socket of `gmemd.socket` (its unit name, the
/// default `FileDescriptorName=`). gmemd listens on a socket of either name.
pub const SOCKET_UNIT_NAME: &str = "gmemd.socket";

/// The environment variable with the store's capacity. systemd 254 and
/// later set it from `FileDescriptorStoreMax=`; for 252 `gmemd.service` sets
/// it to the same number, and the keeper sets it to its own limit.
pub const FDSTORE_ENV: &str = "FDSTORE";

/// The environment variable with the number of restarts the keeper made.
pub const RESTARTS_ENV: &str = "GMEMD_RESTARTS";

/// How long a notification may wait for room in the manager's queue before
/// the send fails (the manager is hung, or flooded).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What goes wrong with the fd store or its environment. The functions of
/// this module return it inside an [`io::Error`] (as its source, with a
/// fitting [`io::ErrorKind`]); `downcast` gets it back.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// `$NOTIFY_SOCKET` is not an absolute path or an abstract name.
    #[error("NOTIFY_SOCKET={0:?} is neither a socket path nor an abstract name (@NAME)")]
    BadAddress(String),
    /// An fd name systemd would refuse, or that would break `LISTEN_FDNAMES`.
    #[error(
        "fd name {0:?} is invalid: it must be 1 to 255 printable ASCII characters, no ':' or space"
    )]
    BadName(String),
    /// Storing one more fd would overflow the store, which drops fds silently.
    #[error(
        "the fd store is full ({limit} fds; FileDescriptorStoreMax= and FDSTORE= in \
         gmemd.service, or the keeper's limit): this fd would not survive a restart"
    )]
    Full {
        /// The store's capacity.
        limit: usize,
    },
    /// A number in the environment does not parse.
    #[error("{var}={value:?} is not a number")]
    BadNumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

impl From<FdStoreError> for io::Error {
    fn from(e: FdStoreError) -> Self {
        let kind = match e {
            FdStoreError::Full { .. } => io::ErrorKind::StorageFull,
            FdStoreError::BadName(_) => io::ErrorKind::InvalidInput,
            FdStoreError::BadAddress(_) | FdStoreError::BadNumber { .. } => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, e)
    }
}

/// A client of the fd store at `$NOTIFY_SOCKET` (systemd or the keeper).
///
/// It counts the names it stored (and those [`FdStore::adopt`]ed after a
/// restart) and refuses to store past [`FdStore::limit`], since a full store
/// drops fds without a word. Storing a name again replaces the fd (it sends
/// `FDSTOREREMOVE=1` first, as systemd would otherwise keep both).
#[derive(Debug)]
pub struct FdStore {
    socket: OwnedFd,
    address: SocketAddrUnix,
    limit: usize,
    names: HashSet<String>,
}

impl FdStore {
    /// The store at `$NOTIFY_SOCKET` with the capacity in `$FDSTORE` (0 if
    /// unset: systemd's default `FileDescriptorStoreMax=0` keeps nothing);
    /// `None` when `NOTIFY_SOCKET` is unset (no manager: start the keeper).
    ///
    /// # Errors
    /// A bad address or number ([`FdStoreError`]), or the socket syscalls.
    pub fn from_env() -> io::Result<Option<FdStore>> {
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let address = address
            .into_string()
            .map_err(|a| FdStoreError::BadAddress(a.to_string_lossy().into_owned()))?;
        let limit = env_number(FDSTORE_ENV)?.unwrap_or(0);
        Self::connect(&address, usize::try_from(limit).unwrap_or(usize::MAX)).map(Some)
    }

    /// A client of the store at `address` (a `$NOTIFY_SOCKET` value: a path,
    /// or `@name` for the abstract namespace) that stores at most `limit` fds.
    ///
    /// # Errors
    /// [`FdStoreError::BadAddress`], or the socket syscalls.
    pub fn connect(address: &str, limit: usize) -> io::Result<FdStore> {
        let address = notify::parse_address(address)?;
        // Unbound and unconnected: each message is addressed, so a manager
        // that re-binds its socket (daemon-reexec) is still reached.
        let socket = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, Some(SEND_TIMEOUT))?;
        Ok(FdStore {
            socket,
            address,
            limit,
            names: HashSet::new(),
        })
    }

    /// Stores `fd` under `name` (`FDSTORE=1`, `FDNAME=`, `FDPOLL=0`: never
    /// dropped when a socket's peer hangs up). Once this returns, the fd is
    /// queued at the manager, which reads it even if this process dies now.
    ///
    /// Storing a name again replaces its fd: `FDSTOREREMOVE=1`, then
    /// `FDSTORE=1` (systemd would keep both). A crash between the two loses
    /// the name, so give a new object a new name rather than reuse one.
    ///
    /// # Errors
    /// [`FdStoreError::BadName`], [`FdStoreError::Full`], or the send.
    pub fn store(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        if !notify::valid_name(name) {
            return Err(FdStoreError::BadName(name.to_owned()).into());
        }
        let again = self.names.contains(name);
        if !again && self.names.len() >= self.limit {
            return Err(FdStoreError::Full { limit: self.limit }.into());
        }
        if again {
            self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])?;
            self.names.remove(name);
        }
        self.send(&format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n"), &[fd])?;
        self.names.insert(name.to_owned());
        Ok(())
    }

    /// Removes the fds stored under `name` (`FDSTOREREMOVE=1`). Removing a
    /// name that is not stored does nothing.
    ///
    /// # Errors
    /// [`FdStoreError::BadName`], or the send.
    pub fn remove(&mut self, name: &str) -> io::Result<()> {
        if !notify::valid_name(name) {
            return Err(FdStoreError::BadName(name.to_owned()).into());
        }
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])?;
        self.names.remove(name);
        Ok(())
    }

    /// Says the service is up (`READY=1`) with a status line.
    ///
    /// # Errors
    /// The send.
    pub fn ready(&mut self, status: &str) -> io::Result<()> {
        let status = notify::one_line(status);
        self.send(&format!("READY=1\nSTATUS={status}\n"), &[])
    }

    /// Updates the status line (`STATUS=`, shown by `systemctl status`).
    ///
    /// # Errors
    /// The send.
    pub fn status(&mut self, status: &str) -> io::Result<()> {
        let status = notify::one_line(status);
        self.send(&format!("STATUS={status}\n"), &[])
    }

    /// Says the service is stopping on purpose (`STOPPING=1`).
    ///
    /// # Errors
    /// The send.
    pub fn stopping(&mut self) -> io::Result<()> {
        self.send("STOPPING=1\n", &[])
    }

    /// Pings the watchdog (`WATCHDOG=1`); send it at about half of
    /// [`FdStore::watchdog_interval`].
    ///
    /// # Errors
    /// The send.
    pub fn watchdog(&mut self) -> io::Result<()> {
        self.send("WATCHDOG=1\n", &[])
    }

    /// The watchdog interval the manager expects pings within
    /// (`WATCHDOG_USEC`, if `WATCHDOG_PID` is unset or this process).
    pub fn watchdog_interval() -> Option<Duration> {
        let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        (for_us && usec > 0).then(|| Duration::from_micros(usec))
    }

    /// How many names are stored (by this process, or adopted).
    pub fn stored(&self) -> usize {
        self.names.len()
    }

    /// How many fds the store holds at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `name` is stored.
    pub fn is_stored(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Counts names that are in the store already: the ones this process
    /// got back from [`listen_fds`] and keeps (not [`SOCKET_UNIT_NAME`],
    /// which the socket unit holds, not the store).
    pub fn adopt<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        self.names.extend(names.into_iter().map(str::to_owned));
    }

    fn send(&self, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        notify::send(self.socket.as_fd(), &self.address, text, fds)
    }
}

/// `var` as a number, `None` if unset.
fn env_number(var: &'static str) -> Result<Option<u64>, FdStoreError> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    value
        .trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| FdStoreError::BadNumber {
            var,
            value: value.into_owned(),
        })
}

#[cfg(test)]
mod tests;
