//! A control session with gmemd whose every request is bounded in time.
//!
//! `gmemctl status`, `create`, `destroy`, `scrub`, `revoke`, `transfer`,
//! `forget` and `restart` talk to gmemd through a [`Session`]: connecting (even when the
//! daemon's listen backlog is full), the handshake and each request are
//! bounded by `--timeout`, and when one of them runs out the error names
//! the daemon that did not answer ([`SessionError::Timeout`]) instead of
//! hanging. (`launch`, `upgrade`, `hotplug` and `unplug` keep their own
//! per-step bounds.)
//!
//! Requests that address a VM's namespace, TRANSFER and FORGET need the
//! daemon's feature `VM_SCOPE`, RESTART its feature `RESTART`; without
//! them they fail here with [`SessionError::NoFeature`] before anything is
//! sent.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gmem_protocol::conn::ConnError;
use gmem_protocol::wire::{
    CreateFlags, DaemonStatus, Features, FileInfo, FillStatus, MemoryKind, Name, RevokeReport,
    VmSelector,
};
use gmem_protocol::{Client, ClientError, ClientResult};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::address::FileArg;
use crate::report::{Files, Status};

/// What `--timeout` is unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of a [`Session`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting to the socket failed.
    #[error("cannot connect to gmemd at {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer (accept, handshake or a request) in time.
    #[error("gmemd at {} did not answer within {}", socket.display(), Seconds(*timeout))]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The bound that ran out.
        timeout: Duration,
    },
    /// The daemon lacks a feature the request needs.
    #[error(
        "gmemd at {} does not support {what} (it lacks feature {feature}: an older gmemd?)",
        socket.display()
    )]
    NoFeature {
        /// The socket.
        socket: PathBuf,
        /// The feature, as PROTOCOL.md names it (`VM_SCOPE`, `RESTART`).
        feature: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// The daemon refused the request, or the connection failed.
    #[error(transparent)]
    Client(ClientError),
}

/// A [`Duration`] as `--timeout` takes it: `5s`, `0.5s`.
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// Why a `--timeout` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// Not a number.
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    /// Zero, negative or too large.
    #[error("{0:?}: expected more than 0 and at most a day of seconds")]
    OutOfRange(String),
}

/// Parses `--timeout SECS`: seconds, fractions allowed, more than 0 and at
/// most a day.
///
/// # Errors
/// [`TimeoutError`].
pub fn parse_timeout(text: &str) -> Result<Duration, TimeoutError> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| TimeoutError::NotANumber(text.to_owned()))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => Ok(d),
        _ => Err(TimeoutError::OutOfRange(text.to_owned())),
    }
}

/// A control session with gmemd (an operator's, when run by one).
#[derive(Debug)]
pub struct Session {
    client: Client,
    socket: PathBuf,
    timeout: Duration,
}

impl Session {
    /// Connects to `socket` and says HELLO as a control session, offering
    /// every feature this client knows (`VM_SCOPE` included); each step is
    /// bounded by `timeout`, as is every later request.
    ///
    /// # Errors
    /// [`SessionError::Connect`], [`SessionError::Timeout`], or the
    /// daemon's refusal.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, SessionError> {
        let stream = connect_bounded(socket, timeout).map_err(|source| {
            if is_timeout(&source) {
                timed_out(socket, timeout)
            } else {
                SessionError::Connect {
                    socket: socket.to_owned(),
                    source,
                }
            }
        })?;
        let client = Client::handshake(stream, None).map_err(|e| classify(e, socket, timeout))?;
        Ok(Session {
            client,
            socket: socket.to_owned(),
            timeout,
        })
    }

    /// Features both sides support.
    pub fn features(&self) -> Features {
        self.client.features()
    }

    /// Whether the daemon knows namespaces, TRANSFER and FORGET.
    pub fn has_vm_scope(&self) -> bool {
        self.features().contains(Features::VM_SCOPE)
    }

    /// The socket this session is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon itself (since when it serves, restarts survived, what it
    /// recovered); `None` from a daemon too old to say.
    ///
    /// # Errors
    /// As [`Session::status`].
    pub fn daemon_status(&mut self) -> Result<Option<DaemonStatus>, SessionError> {
        self.bounded(Client::daemon_status)
    }

    /// Asks gmemd to restart in place (operators only). The reply comes
    /// before the restart; see [`crate::daemon::restart`] for waiting until
    /// the new gmemd serves.
    ///
    /// # Errors
    /// [`SessionError::NoFeature`] on a daemon without `RESTART`, or as
    /// [`Session::status`] (`EPERM` for a non-operator).
    pub fn restart(&mut self) -> Result<(), SessionError> {
        self.need_feature(Features::RESTART, "RESTART", "restart")?;
        self.bounded(Client::restart)
    }

    /// The daemon (when it can say), files (with their namespaces when the
    /// daemon has `VM_SCOPE`) and leases.
    ///
    /// # Errors
    /// [`SessionError::Timeout`] or [`SessionError::Client`].
    pub fn status(&mut self) -> Result<Status, SessionError> {
        let daemon = self.daemon_status()?;
        let files = if self.has_vm_scope() {
            Files::Scoped(self.bounded(Client::scoped_files)?)
        } else {
            Files::Plain(self.bounded(Client::files)?)
        };
        let leases = self.bounded(Client::leases)?;
        let memory = self.memory_status()?;
        Ok(Status {
            daemon,
            files,
            leases,
            memory,
        })
    }

    /// Creates an operators' file. Its fd is closed at once: gmemd keeps
    /// the file.
    ///
    /// # Errors
    /// As [`Session::status`].
    pub fn create(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
    ) -> Result<FileInfo, SessionError> {
        self.bounded(|c| c.create(name, size, kind))
            .map(|(_fd, info)| info)
    }

    /// Creates an operators' file that gmemd populates in the background
    /// (CREATE with `PREFAULT`); [`Session::memory_status`] shows how far
    /// it got. An existing file of that size and kind is opened and
    /// populated (the command may be run again).
    ///
    /// # Errors
    /// [`SessionError::NoFeature`] on a daemon without `PREFAULT`, or as
    /// [`Session::status`].
    pub fn create_prefaulted(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
    ) -> Result<FileInfo, SessionError> {
        self.need_feature(Features::PREFAULT, "PREFAULT", "prefault")?;
        let flags = CreateFlags::PREFAULT | CreateFlags::OPEN_EXISTING;
        self.bounded(|c| c.create_with(name, size, kind, flags))
            .map(|(_fd, info)| info)
    }

    /// Files being populated and the warm pools (empty from a daemon
    /// without `PREFAULT`).
    ///
    /// # Errors
    /// As [`Session::status`].
    pub fn memory_status(&mut self) -> Result<Vec<FillStatus>, SessionError> {
        if !self.features().contains(Features::PREFAULT) {
            return Ok(Vec::new());
        }
        self.bounded(Client::memory_status)
    }

    /// Destroys a file.
    ///
    /// # Errors
    /// [`SessionError::NoFeature`] for a VM's file on an older daemon, or
    /// as [`Session::status`].
    pub fn destroy(&mut self, file: &FileArg) -> Result<(), SessionError> {
        self.need_scope_for(file)?;
        self.bounded(|c| c.destroy_in(&file.to_ref()))
    }

    /// Destroys a file's content and forgets who received it.
    ///
    /// # Errors
    /// As [`Session::destroy`].
    pub fn scrub(&mut self, file: &FileArg) -> Result<(), SessionError> {
        self.need_scope_for(file)?;
        self.bounded(|c| c.scrub_in(&file.to_ref()))
    }

    /// Ends a VM's lease and destroys the content only it owned.
    ///
    /// # Errors
    /// As [`Session::status`].
    pub fn revoke(&mut self, vm: &VmSelector) -> Result<RevokeReport, SessionError> {
        self.bounded(|c| c.revoke(vm))
    }

    /// Moves an unbound file to another namespace and name: the
    /// destination is a fresh inode holding a copy of the content; the old
    /// one is zeroed.
    ///
    /// # Errors
    /// [`SessionError::NoFeature`], or as [`Session::status`].
    pub fn transfer(&mut self, from: &FileArg, to: &FileArg) -> Result<FileInfo, SessionError> {
        self.need_vm_scope("transfer")?;
        self.bounded(|c| c.transfer(&from.to_scoped_ref(), &to.to_scoped_ref()))
    }

    /// Destroys every file of a VM that has no lease and unties it from
    /// its principal, freeing its UUID and name.
    ///
    /// # Errors
    /// [`SessionError::NoFeature`], or as [`Session::status`].
    pub fn forget(&mut self, vm: &VmSelector) -> Result<(), SessionError> {
        self.need_vm_scope("forget")?;
        self.bounded(|c| c.forget(vm))
    }

    fn need_scope_for(&self, file: &FileArg) -> Result<(), SessionError> {
        if file.is_scoped() {
            self.need_vm_scope("files addressed as VM/NAME")?;
        }
        Ok(())
    }

    fn need_vm_scope(&self, what: &'static str) -> Result<(), SessionError> {
        self.need_feature(Features::VM_SCOPE, "VM_SCOPE", what)
    }

    /// Fails with [`SessionError::NoFeature`] unless `needed` (named
    /// `feature` in PROTOCOL.md) was negotiated; `what` is the operation.
    pub(crate) fn need_feature(
        &self,
        needed: Features,
        feature: &'static str,
        what: &'static str,
    ) -> Result<(), SessionError> {
        if self.features().contains(needed) {
            Ok(())
        } else {
            Err(SessionError::NoFeature {
                socket: self.socket.clone(),
                feature,
                what,
            })
        }
    }

    /// Runs requests on the client; the socket's timeouts bound each one.
    fn bounded<T>(
        &mut self,
        request: impl FnOnce(&mut Client) -> ClientResult<T>,
    ) -> Result<T, SessionError> {
        request(&mut self.client).map_err(|e| classify(e, &self.socket, self.timeout))
    }
}

/// Connects with `timeout` bounding the connect itself (a Unix socket's
/// connect waits while the listener's backlog is full, as long as
/// `SO_SNDTIMEO` allows) and every later send and receive.
fn connect_bounded(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    rustix::net::connect(&stream, &SocketAddrUnix::new(socket)?)?;
    Ok(stream)
}

/// A send, receive or connect that ran out of time.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn timed_out(socket: &Path, timeout: Duration) -> SessionError {
    SessionError::Timeout {
        socket: socket.to_owned(),
        timeout,
    }
}

fn classify(e: ClientError, socket: &Path, timeout: Duration) -> SessionError {
    match e {
        ClientError::Conn(ConnError::Io(ref io)) if is_timeout(io) => timed_out(socket, timeout),
        e => SessionError::Client(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use super::*;

    #[test]
    fn timeouts_parse_as_positive_seconds() {
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("86400").unwrap(), Duration::from_secs(86_400));
        for bad in ["0", "-1", "86401", "inf", "NaN"] {
            assert!(
                matches!(parse_timeout(bad), Err(TimeoutError::OutOfRange(_))),
                "{bad}"
            );
        }
        for bad in ["", "5s", "five"] {
            assert!(
                matches!(parse_timeout(bad), Err(TimeoutError::NotANumber(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn timeout_message_names_the_daemon() {
        let e = timed_out(Path::new("/run/gmemd/gmemd.sock"), DEFAULT_TIMEOUT);
        assert_eq!(
            e.to_string(),
            "gmemd at /run/gmemd/gmemd.sock did not answer within 5s"
        );
        let e = timed_out(Path::new("/s"), Duration::from_millis(500));
        assert_eq!(e.to_string(), "gmemd at /s did not answer within 0.5s");
    }

    #[test]
    fn a_daemon_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mute.sock");
        // Listening but never accepting: connect succeeds (backlog), HELLO
        // gets no reply.
        let _listener = UnixListener::bind(&socket).unwrap();
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let err = Session::connect(&socket, timeout).unwrap_err();
        assert!(start.elapsed() >= timeout);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, SessionError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("did not answer within 0.2s"));
    }

    #[test]
    fn a_full_backlog_times_out_instead_of_hanging_in_connect() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("busy.sock");
        let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&socket).unwrap()).unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        // Fill the backlog with connections nobody accepts.
        let mut queued = Vec::new();
        loop {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            match rustix::net::connect(&fd, &SocketAddrUnix::new(&socket).unwrap()) {
                Ok(()) => queued.push(fd),
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(queued.len() < 1000, "the backlog never filled");
        }
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let err = Session::connect(&socket, timeout).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, SessionError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Session::connect(&dir.path().join("none.sock"), DEFAULT_TIMEOUT).unwrap_err();
        assert!(matches!(err, SessionError::Connect { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot connect to gmemd at "));
    }
}
