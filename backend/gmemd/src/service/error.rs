//! Refusals of the service, with their errno and close decision: the one
//! place a refusal becomes a reply.

use rustix::io::Errno;

use gmem_protocol::server::FrameError;
use gmem_protocol::wire::{LeaseId, MemoryKind, Request, VmId};

use crate::ledger::LedgerError;
use crate::memory::MemoryError;

/// Refusals of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The peer's uid is neither allowed nor an operator.
    #[error("uid {uid} is not allowed to use gmemd")]
    NotAllowed {
        /// Peer uid.
        uid: u32,
    },
    /// The frame is not a request the daemon can act on.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// A request other than HELLO before the handshake.
    #[error("{0} before HELLO: the handshake comes first")]
    NoHandshake(Request),
    /// A second HELLO.
    #[error("HELLO on a session that already did its handshake")]
    SecondHello,
    /// The request needs a VM lease, the session is a control session.
    #[error("{0} needs a VM lease; control sessions cannot do it")]
    NeedsLease(Request),
    /// The request needs an operator uid.
    #[error("{request} is an operator request and uid {uid} is not an operator")]
    NotOperator {
        /// Request.
        request: Request,
        /// Peer uid.
        uid: u32,
    },
    /// The feature was not negotiated in HELLO.
    #[error("{0} needs a feature that was not negotiated in HELLO")]
    FeatureOff(Request),
    /// The session's lease was revoked by an operator; the connection is
    /// being closed.
    #[error("lease {0} was revoked by an operator: this request was not served")]
    Revoked(LeaseId),
    /// The total memory limit would be exceeded.
    #[error("memory limit reached: {used} in use + {requested} requested > {limit}")]
    MemoryLimit {
        /// Bytes in use (formatted).
        used: String,
        /// Bytes requested (formatted).
        requested: String,
        /// Limit (formatted).
        limit: String,
    },
    /// A DEVICE that cannot be served as asked.
    #[error("{0}")]
    BadDevice(String),
    /// A device's socket could not be served.
    #[error("cannot serve a device on {path}")]
    DeviceSocket {
        /// The socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VM has as many devices as it may.
    #[error("VM {vm} has {max} devices, the most one VM may have")]
    TooManyDevices {
        /// The VM's name.
        vm: gmem_protocol::wire::Name,
        /// The limit.
        max: usize,
    },
    /// gmemd keeps as many files as it may.
    #[error("gmemd keeps {limit} memory files, its limit (--max-files); destroy some first")]
    TooManyFiles {
        /// The limit.
        limit: usize,
    },
    /// The principal's file quota would be exceeded.
    #[error("file quota reached: the VMs of {tie} have {limit} files; destroy one first")]
    FileQuota {
        /// The principal.
        tie: String,
        /// The quota.
        limit: usize,
    },
    /// The principal's memory quota would be exceeded.
    #[error(
        "memory quota reached: {tie} uses {used} (memory it destroyed counts until the \
         processes it was handed to have exited) + {requested} requested > {limit}"
    )]
    MemoryQuota {
        /// The principal.
        tie: String,
        /// Bytes in use (formatted).
        used: String,
        /// Bytes requested (formatted).
        requested: String,
        /// Quota (formatted).
        limit: String,
    },
    /// gmemd tracks as many processes holding memory fds as it may.
    #[error(
        "gmemd already tracks {limit} processes holding memory files; no fd is handed to \
         pid {pid} until some exit"
    )]
    TooManyHolders {
        /// The process.
        pid: u32,
        /// The limit.
        limit: usize,
    },
    /// The per-VM file limit would be exceeded.
    #[error("file limit reached: VM {vm} already has {limit} files; destroy one first")]
    FileLimit {
        /// The VM.
        vm: VmId,
        /// The limit.
        limit: usize,
    },
    /// CREATE with OPEN_EXISTING found a different file of that name.
    #[error("memory file {file} exists as {kind}, {size} bytes; not what was asked")]
    ExistsDifferently {
        /// The file.
        file: String,
        /// Existing kind.
        kind: MemoryKind,
        /// Existing size.
        size: u64,
    },
    /// guest_memfds are only for the VM that created them.
    #[error("memory file {0} is a guest_memfd: only its own VM uses it, it cannot be opened")]
    GuestMemfdClosed(String),
    /// Scrubbing a file that is bound.
    #[error(
        "memory file {file} is bound in {bindings} slot(s) by VM {owner}; stop that VM, or \
         end its lease with `gmemctl revoke {}`, before scrubbing",
        owner.name
    )]
    ScrubBound {
        /// The file.
        file: String,
        /// Bindings.
        bindings: usize,
        /// The VM that binds it.
        owner: VmId,
    },
    /// HANDOFF named a process that does not hold the lease's socket.
    #[error(
        "pid {pid} does not hold this lease's socket as its fd {fd}; hand the socket over first"
    )]
    NotLeaseHolder {
        /// The process named.
        pid: u32,
        /// The fd number named.
        fd: u32,
    },
    /// HANDOFF's fd is not a pidfd of a live process gmemd can see.
    #[error("HANDOFF needs the pidfd of a live process gmemd can see")]
    NotPidfd(#[source] std::io::Error),
    /// gmemd cannot look at the named process's fds.
    #[error("cannot check which sockets pid {pid} holds")]
    HandoffUnverifiable {
        /// The process named.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating an fd for a reply failed.
    #[error("cannot duplicate the fd of {file}")]
    DupFd {
        /// The file.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ledger refused.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Making or checking memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl ServiceError {
    /// The errno carried by the reply (PROTOCOL.md lists them).
    pub fn errno(&self) -> Errno {
        match self {
            Self::NotAllowed { .. } => Errno::ACCESS,
            Self::Malformed(e) => e.errno,
            Self::NoHandshake(_) | Self::SecondHello => Errno::PROTO,
            Self::NeedsLease(_)
            | Self::NotOperator { .. }
            | Self::GuestMemfdClosed(_)
            | Self::NotLeaseHolder { .. } => Errno::PERM,
            Self::FeatureOff(_) => Errno::OPNOTSUPP,
            Self::Revoked(_) => Errno::CONNABORTED,
            Self::BadDevice(_) => Errno::INVAL,
            Self::DeviceSocket { .. } => Errno::IO,
            Self::TooManyDevices { .. } => Errno::NOSPC,
            Self::MemoryLimit { .. } => Errno::NOSPC,
            Self::FileLimit { .. } => Errno::MFILE,
            Self::TooManyFiles { .. } | Self::TooManyHolders { .. } => Errno::NFILE,
            Self::FileQuota { .. } | Self::MemoryQuota { .. } => Errno::DQUOT,
            Self::ExistsDifferently { .. } => Errno::EXIST,
            Self::ScrubBound { .. } => Errno::BUSY,
            Self::NotPidfd(e) => {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    Errno::SRCH
                } else {
                    Errno::INVAL
                }
            }
            Self::HandoffUnverifiable { .. } => Errno::ACCESS,
            Self::DupFd { .. } => Errno::MFILE,
            Self::Ledger(e) => e.errno(),
            Self::Memory(e) => e.errno(),
        }
    }

    /// Whether the connection is closed after the reply: only for peers that
    /// may not talk to gmemd at all.
    pub fn should_close(&self) -> bool {
        matches!(self, Self::NotAllowed { .. })
    }
}

/// Result alias of the service.
pub(crate) type ServiceResult<T> = Result<T, ServiceError>;
