//! gmemd: the host daemon that owns guest RAM for KVM virtual machines.
//!
//! The daemon's parts:
//! - [`ledger`]: files, leases, bindings and owners; pure data and invariants.
//! - [`service`]: the policy that applies requests to the ledger and owns the
//!   memory fds.
//! - [`memory`]: creating memory files of each kind, checking deposits, scrubbing.
//! - [`event_loop`]: epoll, sockets and frames; no policy.
//! - [`peer`]: what the kernel says about the process on the other end.
//! - [`config`]: who may connect, who is an operator, limits, default paths.
//! - [`prefault`] and [`pool`]: memory populated ahead of use.
//!
//! Host helpers the daemon uses and `gmemctl` shares, so both programs agree
//! on them: [`size`] (sizes in and out), [`signals`] (signalfd),
//! [`hugepages`] (the hugetlb pools), [`memory::secret_fd`] and
//! [`config::default_socket`].

pub mod config;
pub mod config_file;
pub mod event_loop;
pub mod fdstore;
pub mod handover;
pub mod hugepages;
pub mod journal;
pub mod ledger;
pub mod log_limit;
pub mod log_sink;
pub mod memory;
pub mod peer;
pub mod pool;
pub mod prefault;
pub mod principal;
pub mod runtime_dir;
pub mod service;
pub mod signals;
pub mod size;
pub mod startup;
pub mod vhost;

pub use gmem_protocol::error_chain;
