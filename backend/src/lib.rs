//! gmemd: the host daemon that owns guest RAM for KVM virtual machines.
//!
//! - [`ledger`]: files, leases, bindings and owners; pure data and invariants.
//! - [`memory`]: creating memory files of each kind, checking deposits, scrubbing.
//! - [`service`]: the policy that applies requests to the ledger.
//! - [`event_loop`]: epoll, sockets and frames; no policy.
//! - [`config`]: uids, limits, default paths, size parsing.
//! - [`caps`]: what this host offers (KVM, guest_memfd, hugepages, secretmem).
//! - [`qmp`]: a QMP client for driving QEMU.

pub mod caps;
pub mod config;
pub mod event_loop;
pub mod launch;
pub mod ledger;
pub mod memory;
pub mod qmp;
pub mod report;
pub mod service;
pub mod signals;

pub use gmem_protocol::error_chain;
