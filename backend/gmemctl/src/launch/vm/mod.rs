//! A launched VM's state outside QEMU: its record ([`record`]) in the run
//! directory with its lock ([`run_dir`]), attaching to it while it runs
//! ([`attach`]), and its lease taken back from QEMU ([`lease_fd`]).

pub mod attach;
pub mod lease_fd;
pub mod record;
pub mod run_dir;
pub(crate) mod serde_fields;
