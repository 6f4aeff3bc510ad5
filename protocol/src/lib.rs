//! The gmemd protocol: wire format, fd passing and a blocking client.
//!
//! gmemd owns guest RAM for KVM virtual machines and hands it to VMMs as file
//! descriptors over a Unix stream socket, in messages shaped like
//! vhost-user's. `PROTOCOL.md` beside this crate is the normative spec.
//!
//! - [`wire`]: header, request codes, payload layouts, encode/decode.
//! - [`conn`]: framed messages and SCM_RIGHTS fds over a socket.
//! - [`server`]: a daemon's side without I/O: frames checked and decoded into
//!   requests, responses encoded into reply frames.
//! - [`client`]: the blocking client a VMM or tool uses.
//! - `guest_memory` (feature `guest-memory`): received fds as a vm-memory `GuestMemoryMmap`.
//! - `kvm` (feature `kvm`): KVM memslots from that memory, kept in step with gmemd.

#![deny(missing_docs)]

pub mod client;
pub mod conn;
#[cfg(feature = "guest-memory")]
pub mod guest_memory;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod server;
pub mod wire;

pub use client::{Client, ClientError, ClientResult};
pub use wire::{
    BindRequest, FileInfo, FileRef, FileStatus, GuestAddress, LeaseId, LeaseStatus, MemoryKind,
    Name, RevokeReport, Scope, ScopedFileStatus, Uuid, VmId, VmSelector,
};

/// Formats an error and its sources as one line, `a: b: c`, the way the
/// CLIs print them once (a cause already quoted by its parent is skipped).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
