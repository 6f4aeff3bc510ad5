//! gmemctl: the operator CLI of gmemd, as a library its binary and the
//! end-to-end tests share.
//!
//! - [`launch`]: unmodified QEMU on gmemd memory: `launch`, `upgrade`,
//!   `hotplug`, `unplug`.
//! - [`qmp`]: a blocking QMP client (QEMU Machine Protocol) with fd passing.
//! - [`caps`]: what this host offers (KVM, guest_memfd, hugepages, secretmem).
//! - [`address`]: VMs and files on the command line (`VM/NAME`, `NAME`).
//! - [`session`]: a control session with gmemd, every request bounded by
//!   `--timeout`; `status`, `create`, `destroy`, `scrub`, `transfer`,
//!   `revoke`, `forget`, `restart`.
//! - [`prefault`]: `create --prefault`, waiting with a progress bar.
//! - [`report`]: `gmemctl status` as a table or JSON, with each file's
//!   namespace and orphans' age.
//! - [`daemon`]: gmemd itself: the status line (since when it serves,
//!   restarts survived, what it recovered) and `gmemctl restart`.
//!
//! Sizes, the default socket path, signalfds, hugepage pools and
//! `memfd_secret` come from the daemon's crate, so both programs agree.

pub mod address;
pub mod caps;
pub mod daemon;
pub mod launch;
pub mod prefault;
pub mod qmp;
pub mod report;
pub mod session;

pub use gmem_protocol::error_chain;
