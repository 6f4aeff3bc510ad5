//! The filter between QEMU and the vhost-user backend crate.
//!
//! `vhost_user_backend::VhostUserDaemon` maps every region of SET_MEM_TABLE
//! and ADD_MEM_REG before gmemd's backend is asked, so a region past the end
//! of its file (a later SIGBUS in gmemd) or an fd that is not the VM's memory
//! would be mapped unchecked. gmemd therefore accepts QEMU's connection
//! itself, gives the daemon one end of a private socketpair, and relays:
//! every frontend message is read whole, checked and passed on (or refused);
//! the backend's replies go back to QEMU unchanged.
//!
//! By concept: `wire` (header, fd counts, request bodies), `transport`
//! (whole messages with fds over a stream socket), `region` (whether a
//! region may be mapped; the table the backend holds), `relay` (the two
//! directions and how the filter ends).

mod region;
mod relay;
mod transport;
mod wire;

use std::error::Error;
use std::io;
use std::os::fd::OwnedFd;

use thiserror::Error;

pub use region::{RegionRefusal, MAX_MEM_SLOTS};
pub use relay::run;
pub use transport::TransportError;
pub use wire::{FdRule, WireError};

/// One memory region the frontend sent, with its fd (not yet mapped by
/// anyone).
#[derive(Debug)]
pub struct OfferedRegion {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
    pub fd: OwnedFd,
}

/// What the filter knows of a region it passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRegion {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub mmap_offset: u64,
    /// The file's device and inode, from fstat on the fd that was passed on.
    pub dev: u64,
    pub ino: u64,
}

/// gmemd's judgement, supplied by whoever runs the filter.
pub trait RegionJudge: Send {
    /// Whether the frontend may have `region` mapped: Ok(()) or Err(reason,
    /// logged and counted). Called after the filter's own checks passed.
    fn judge(&mut self, region: &MappedRegion) -> Result<(), String>;

    /// The table the backend now has (after every accepted SET_MEM_TABLE /
    /// ADD_MEM_REG / REM_MEM_REG).
    fn table_changed(&mut self, table: &[MappedRegion]);
}

/// Which side of the filter ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// QEMU hung up, or the frontend socket was shut down.
    Frontend,
    /// The backend crate closed its end.
    Backend,
}

/// How a filter that ended without error ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterEnd {
    /// The side that went away first.
    pub closed_by: Side,
    /// Frontend messages passed on to the backend.
    pub forwarded: u64,
    /// Frontend messages refused (not passed on) while serving went on.
    pub refused: u64,
}

/// Why the filter ended the connection.
#[derive(Debug, Error)]
pub enum FilterError {
    #[error("reading from the frontend")]
    ReceiveFromFrontend(#[source] TransportError),
    #[error("the frontend broke the protocol")]
    FrontendMessage(#[source] WireError),
    /// A refused SET_LOG_BASE ends the connection: QEMU waits for its reply
    /// whatever the flags say and takes any reply as success, so neither
    /// answering nor staying silent would be right.
    #[error("refused SET_LOG_BASE")]
    LogBaseRefused(#[source] RegionRefusal),
    #[error("passing a message on to the backend")]
    ForwardToBackend(#[source] TransportError),
    #[error("sending a refusal to the frontend")]
    ReplyToFrontend(#[source] TransportError),
    #[error("reading from the backend")]
    ReceiveFromBackend(#[source] TransportError),
    #[error("passing a backend message on to the frontend")]
    RelayToFrontend(#[source] TransportError),
    #[error("spawning the backend-to-frontend thread")]
    SpawnHelper(#[source] io::Error),
}

impl FilterError {
    /// The transport failure underneath, if any.
    fn transport(&self) -> Option<&TransportError> {
        match self {
            Self::ReceiveFromFrontend(e)
            | Self::ForwardToBackend(e)
            | Self::ReplyToFrontend(e)
            | Self::ReceiveFromBackend(e)
            | Self::RelayToFrontend(e) => Some(e),
            Self::FrontendMessage(_) | Self::LogBaseRefused(_) | Self::SpawnHelper(_) => None,
        }
    }

    /// Whether this is a peer going away (including mid-message) rather
    /// than a broken protocol or a local failure.
    pub fn is_disconnect(&self) -> bool {
        self.transport().is_some_and(TransportError::is_disconnect)
    }
}

/// `error: cause: cause…`, for log lines.
fn error_chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_causes() {
        let e = FilterError::ReceiveFromFrontend(TransportError::Truncated { got: 3, want: 12 });
        assert_eq!(
            error_chain(&e),
            "reading from the frontend: connection closed 3 bytes into a message of 12 bytes"
        );
        assert!(e.is_disconnect());
        assert!(
            !FilterError::FrontendMessage(WireError::ReplyFromFrontend { request: 1 })
                .is_disconnect()
        );
    }
}
