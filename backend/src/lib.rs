//! gmemd daemon library.
pub mod caps;
pub mod qmp;
