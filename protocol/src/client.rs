//! Blocking client: one connection = one lease (or one control session).
//!
//! The client rides out restarts of gmemd (PROTOCOL.md §14): it skips the
//! restart NOTICE, and when a request of its may have been lost with the
//! daemon that died, it finds out and resends it where that is safe
//! (module `exchange`).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conn::{ConnError, FrameReader};
use crate::wire::{
    BindRequest, CreateFlags, CreateRequest, DaemonStatus, DepositRequest, DeviceReply,
    DeviceRequest, Features, FileInfo, FileRef, FileStatus, FillStatus, HandoffReply,
    HandoffRequest, Hello, HelloReply, LeaseId, LeaseStatus, MemoryKind, Name, Request,
    RequestBody, RestartNotice, RevokeReport, ScopedFileStatus, StatusPage, StatusQuery,
    StatusSection, TransferRequest, VmId, VmSelector, WireError,
};

mod exchange;
#[cfg(test)]
mod tests;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the daemon's socket failed.
    #[error("cannot connect to gmemd at {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("connection to gmemd failed")]
    Conn(#[from] ConnError),
    /// The daemon sent something that does not decode.
    #[error("malformed reply from gmemd")]
    Wire(#[from] WireError),
    /// The daemon answered the request with an error.
    #[error("{request} refused: {message} (errno {errno})")]
    Refused {
        /// The request.
        request: Request,
        /// Positive errno.
        errno: i32,
        /// The daemon's explanation.
        message: String,
    },
    /// A reply that does not answer the request (wrong code, fds).
    #[error("unexpected reply to {request}: {what}")]
    UnexpectedReply {
        /// The request.
        request: Request,
        /// What was wrong.
        what: String,
    },
    /// gmemd restarted while the request was in flight, the daemon that
    /// died had read it, and it is not one the client can safely send
    /// again (PROTOCOL.md §14.4): it may or may not have been applied.
    /// The connection is fine; look (STATUS) before trying again.
    #[error("gmemd restarted while {request} was in flight; it may or may not have been applied")]
    Restarted {
        /// The request.
        request: Request,
    },
    /// Setting a socket option failed.
    #[error("socket setup failed")]
    Socket(#[source] std::io::Error),
}

impl ClientError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The daemon's message of a refusal.
    pub fn message(&self) -> Option<&str> {
        match self {
            ClientError::Refused { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// Result alias of the client.
pub type ClientResult<T> = Result<T, ClientError>;

/// A connection to gmemd.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reader: FrameReader,
    hello: HelloReply,
    vm: Option<VmId>,
    restarts: Restarts,
}

/// Restart notices a client has read, and the marker codes it sends.
#[derive(Debug, Default)]
struct Restarts {
    seen: u64,
    last: Option<RestartNotice>,
    next_marker: u32,
}

impl Client {
    /// Connects and opens a lease for `vm`.
    ///
    /// # Errors
    /// [`ClientError::Connect`], or the daemon's refusal of the lease.
    pub fn connect(path: impl AsRef<Path>, vm: VmId) -> ClientResult<Self> {
        Self::handshake(connect_stream(path.as_ref())?, Some(vm))
    }

    /// Connects as a control session (no VM, no lease): what `gmemctl` uses.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect_control(path: impl AsRef<Path>) -> ClientResult<Self> {
        Self::handshake(connect_stream(path.as_ref())?, None)
    }

    /// Runs the handshake on an already connected stream (for example one
    /// inherited from a launcher).
    ///
    /// # Errors
    /// The daemon's refusal or a connection error;
    /// [`ClientError::Restarted`] if gmemd restarted and lost the HELLO
    /// (close the stream, which ends any lease it opened, and connect again).
    pub fn handshake(stream: UnixStream, vm: Option<VmId>) -> ClientResult<Self> {
        let mut client = Client {
            stream,
            reader: FrameReader::new(),
            hello: HelloReply {
                features: Features::empty(),
                lease: None,
                version: 0,
            },
            vm: vm.clone(),
            restarts: Restarts::default(),
        };
        let body = client.call(
            &RequestBody::Hello(Hello {
                features: Features::all(),
                vm,
            }),
            &[],
        )?;
        client.hello = HelloReply::decode(&body.0)?;
        Ok(client)
    }

    /// Wraps a stream whose handshake another process already did: for
    /// example a lease socket shared with a running VMM (taken with
    /// `pidfd_getfd`), to send BIND/UNBIND on that VM's lease. The caller
    /// must make sure nobody else talks on the socket meanwhile.
    pub fn resume(stream: UnixStream, vm: Option<VmId>, lease: Option<LeaseId>) -> Self {
        Client {
            stream,
            reader: FrameReader::new(),
            hello: HelloReply {
                features: Features::all(),
                lease,
                version: crate::wire::VERSION,
            },
            vm,
            restarts: Restarts::default(),
        }
    }

    /// Bounds every wait for a reply (`None`: wait forever).
    ///
    /// # Errors
    /// [`ClientError::Socket`].
    pub fn set_timeout(&self, timeout: Option<Duration>) -> ClientResult<()> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(ClientError::Socket)
    }

    /// The lease id (`None` for a control session).
    pub fn lease(&self) -> Option<LeaseId> {
        self.hello.lease
    }

    /// Features both sides support.
    pub fn features(&self) -> Features {
        self.hello.features
    }

    /// The VM this lease is for.
    pub fn vm(&self) -> Option<&VmId> {
        self.vm.as_ref()
    }

    /// Restart notices read on this connection: how many times gmemd
    /// restarted under it that the client has noticed (PROTOCOL.md §14).
    pub fn restarts_seen(&self) -> u64 {
        self.restarts.seen
    }

    /// The last restart notice read, if any: it says how many restarts the
    /// daemon has survived in all.
    pub fn last_restart(&self) -> Option<RestartNotice> {
        self.restarts.last
    }

    /// The socket, e.g. to pass it to a VMM so the lease lives as long as it does.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Creates a memory file and returns its fd.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EEXIST`, `EINVAL`, `ENOMEM`, `ENOSPC`, …
    pub fn create(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
    ) -> ClientResult<(OwnedFd, FileInfo)> {
        self.create_with(name, size, kind, CreateFlags::empty())
    }

    /// Creates a memory file, or opens it if it exists with that size and kind.
    ///
    /// # Errors
    /// As [`Client::create`].
    pub fn create_or_open(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
    ) -> ClientResult<(OwnedFd, FileInfo)> {
        self.create_with(name, size, kind, CreateFlags::OPEN_EXISTING)
    }

    /// CREATE with explicit flags: `OPEN_EXISTING`, and `PREFAULT` (needs
    /// the feature) to have gmemd populate the file in the background
    /// ([`Client::memory_status`] shows how far it got).
    ///
    /// # Errors
    /// As [`Client::create`].
    pub fn create_with(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
        flags: CreateFlags,
    ) -> ClientResult<(OwnedFd, FileInfo)> {
        let request = RequestBody::Create(CreateRequest {
            name: name.clone(),
            size,
            kind,
            flags,
        });
        self.file_call(&request, &[])
    }

    /// Opens an existing memory file of the session's own namespace (its
    /// VM's; the operators' for a control session).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EPERM`, …
    pub fn open(&mut self, name: &Name) -> ClientResult<(OwnedFd, FileInfo)> {
        self.open_in(&FileRef::own(name.clone()))
    }

    /// Opens a file of any namespace (an operator's request unless it is
    /// the session's own; needs feature `VM_SCOPE` for a scoped name).
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EPERM`, `EOPNOTSUPP`, …
    pub fn open_in(&mut self, file: &FileRef) -> ClientResult<(OwnedFd, FileInfo)> {
        self.file_call(&RequestBody::Open(file.clone()), &[])
    }

    fn file_call(
        &mut self,
        request: &RequestBody,
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<(OwnedFd, FileInfo)> {
        let (body, mut received) = self.call(request, fds)?;
        let info = FileInfo::decode(&body)?;
        Ok((received.remove(0), info))
    }

    /// Records a binding (after, or just before, the VMM's memslot ioctl).
    ///
    /// # Errors
    /// [`ClientError::Refused`]: `EBUSY` (owned by another VM, held by a
    /// live process of another VM, file range overlap), `EINVAL`
    /// (alignment, empty), `ERANGE` (past the end of the file), `EEXIST`
    /// (slot taken), `EADDRINUSE` (guest range taken), `EOVERFLOW`.
    pub fn bind(&mut self, bind: &BindRequest) -> ClientResult<()> {
        self.call(&RequestBody::Bind(bind.clone()), &[]).map(drop)
    }

    /// Removes the binding in `slot`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT` if the slot is not bound.
    pub fn unbind(&mut self, slot: u32) -> ClientResult<()> {
        self.call(&RequestBody::Unbind { slot }, &[]).map(drop)
    }

    /// Hands a client-created memfd or guest_memfd to gmemd under `name`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the fd is not what `kind` says, …
    pub fn deposit(
        &mut self,
        name: &Name,
        kind: MemoryKind,
        fd: BorrowedFd<'_>,
    ) -> ClientResult<FileInfo> {
        let request = RequestBody::Deposit(DepositRequest {
            name: name.clone(),
            kind,
        });
        let (body, _) = self.call(&request, &[fd])?;
        Ok(FileInfo::decode(&body)?)
    }

    /// Tells gmemd that the process of `pidfd` now holds this lease's
    /// socket, as its fd number `fd` (a launcher that handed it to QEMU);
    /// gmemd checks that it does, and STATUS shows that process from then
    /// on. Returns its pid.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EPERM` (not a lease, or the process
    /// does not hold the socket at `fd`), `ESRCH`, `EINVAL`.
    pub fn handoff(&mut self, pidfd: BorrowedFd<'_>, fd: u32) -> ClientResult<u32> {
        let request = RequestBody::Handoff(HandoffRequest { fd });
        let (body, _) = self.call(&request, &[pidfd])?;
        Ok(HandoffReply::decode(&body)?.pid)
    }

    /// Asks gmemd to serve a vhost-user-blk device for the lease's VM,
    /// with `disk` (a memfd file of the VM) as its disk or none; the same
    /// disk again gives the same device. Needs feature `DEVICE`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT` (no such disk), `EINVAL`
    /// (not a memfd, size not a multiple of 512), `ENOSPC` (8 devices
    /// already), `EPERM`, `EOPNOTSUPP`.
    pub fn device(&mut self, disk: Option<&Name>, queues: u32) -> ClientResult<DeviceReply> {
        let request = RequestBody::Device(DeviceRequest {
            queues,
            disk: disk.cloned(),
        });
        let (body, _) = self.call(&request, &[])?;
        Ok(DeviceReply::decode(&body)?)
    }

    /// Forgets a memory file of the session's own namespace.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EBUSY`, `EPERM`.
    pub fn destroy(&mut self, name: &Name) -> ClientResult<()> {
        self.destroy_in(&FileRef::own(name.clone()))
    }

    /// Forgets a memory file of any namespace.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EBUSY`, `EPERM`, `EOPNOTSUPP`.
    pub fn destroy_in(&mut self, file: &FileRef) -> ClientResult<()> {
        self.call(&RequestBody::Destroy(file.clone()), &[])
            .map(drop)
    }

    /// Operator: destroys a file's content, in the session's own namespace.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EBUSY`, `EPERM`.
    pub fn scrub(&mut self, name: &Name) -> ClientResult<()> {
        self.scrub_in(&FileRef::own(name.clone()))
    }

    /// Operator: destroys a file's content, in any namespace.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `ENOENT`, `EBUSY`, `EPERM`, `EOPNOTSUPP`;
    /// [`ClientError::Restarted`] if gmemd restarted and lost it.
    pub fn scrub_in(&mut self, file: &FileRef) -> ClientResult<()> {
        self.call(&RequestBody::Scrub(file.clone()), &[]).map(drop)
    }

    /// Operator: moves a file to another namespace (and name). The file
    /// that arrives is an inode no process outside gmemd ever had an fd
    /// of; what was in the old one is copied into it.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EPERM`, `ENOENT`, `EEXIST`, `EBUSY`;
    /// [`ClientError::Restarted`] if gmemd restarted and lost it.
    pub fn transfer(&mut self, from: &FileRef, to: &FileRef) -> ClientResult<FileInfo> {
        let request = RequestBody::Transfer(TransferRequest {
            from: from.clone(),
            to: to.clone(),
        });
        let (body, _) = self.call(&request, &[])?;
        Ok(FileInfo::decode(&body)?)
    }

    /// Operator: destroys every file of a VM that has no lease and unties
    /// it from its principal, so any principal may use its UUID and name.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EPERM`, `ENOENT`, `EBUSY`;
    /// [`ClientError::Restarted`] if gmemd restarted and lost it.
    pub fn forget(&mut self, vm: &VmSelector) -> ClientResult<()> {
        self.call(&RequestBody::Forget(vm.clone()), &[]).map(drop)
    }

    /// Operator: ends a VM's lease and destroys the content only it owned.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EPERM` for non-admins, `ENOENT`;
    /// [`ClientError::Restarted`] if gmemd restarted and lost it.
    pub fn revoke(&mut self, vm: &VmSelector) -> ClientResult<RevokeReport> {
        let (body, _) = self.call(&RequestBody::Revoke(vm.clone()), &[])?;
        Ok(RevokeReport::decode(&body)?)
    }

    /// Operator: restarts gmemd in place (feature `RESTART`). gmemd
    /// answers, then execs its binary (maybe a newer release) and hands
    /// everything over; this connection stays and later gets a restart
    /// notice (PROTOCOL.md §7.14, §14), which the client skips.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with `EPERM` for non-operators,
    /// `EOPNOTSUPP` without the feature; [`ClientError::Restarted`] if
    /// gmemd restarted (for this request or otherwise) before answering.
    pub fn restart(&mut self) -> ClientResult<()> {
        self.call(&RequestBody::Restart, &[]).map(drop)
    }

    /// The daemon itself (STATUS section 3): its pid, since when it serves,
    /// the restarts it survived and what it recovered. `None` from a
    /// daemon that does not know section 3 (it refuses it `EINVAL`).
    ///
    /// # Errors
    /// Connection or decode errors; a page without exactly one entry is
    /// [`ClientError::UnexpectedReply`].
    pub fn daemon_status(&mut self) -> ClientResult<Option<DaemonStatus>> {
        let request = RequestBody::Status(StatusQuery {
            section: StatusSection::Daemon,
            start: 0,
        });
        let body = match self.call(&request, &[]) {
            Ok((body, _)) => body,
            Err(e) if e.errno() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut page = DaemonStatus::decode_page(&body)?;
        if page.entries.len() != 1 {
            return Err(ClientError::UnexpectedReply {
                request: Request::Status,
                what: format!("daemon page with {} entries, not 1", page.entries.len()),
            });
        }
        Ok(page.entries.pop())
    }

    /// Every memory file, walking all STATUS pages.
    ///
    /// # Errors
    /// Connection or decode errors.
    pub fn files(&mut self) -> ClientResult<Vec<FileStatus>> {
        self.all_pages(StatusSection::Files, FileStatus::decode_page)
    }

    /// Every memory file with its namespace (feature `VM_SCOPE`).
    ///
    /// # Errors
    /// Connection or decode errors.
    pub fn scoped_files(&mut self) -> ClientResult<Vec<ScopedFileStatus>> {
        self.all_pages(StatusSection::ScopedFiles, ScopedFileStatus::decode_page)
    }

    /// Files being populated and the warm pools (STATUS section 4,
    /// feature `PREFAULT`).
    ///
    /// # Errors
    /// Connection or decode errors.
    pub fn memory_status(&mut self) -> ClientResult<Vec<FillStatus>> {
        self.all_pages(StatusSection::Memory, FillStatus::decode_page)
    }

    /// Every open lease, walking all STATUS pages.
    ///
    /// # Errors
    /// Connection or decode errors.
    pub fn leases(&mut self) -> ClientResult<Vec<LeaseStatus>> {
        self.all_pages(StatusSection::Leases, LeaseStatus::decode_page)
    }

    fn all_pages<T>(
        &mut self,
        section: StatusSection,
        decode: fn(&[u8]) -> Result<StatusPage<T>, WireError>,
    ) -> ClientResult<Vec<T>> {
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let request = RequestBody::Status(StatusQuery { section, start });
            let (body, _) = self.call(&request, &[])?;
            let page = decode(&body)?;
            out.extend(page.entries);
            if page.next >= page.total {
                return Ok(out);
            }
            // A page that makes no progress would loop forever.
            if page.next <= start {
                return Err(ClientError::UnexpectedReply {
                    request: Request::Status,
                    what: format!("page at {start} made no progress (total {})", page.total),
                });
            }
            start = page.next;
        }
    }
}

fn connect_stream(path: &Path) -> ClientResult<UnixStream> {
    UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })
}
