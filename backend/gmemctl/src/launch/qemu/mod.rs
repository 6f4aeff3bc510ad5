//! QEMU's command line: the user's arguments checked ([`args`]), where the
//! machine type maps RAM in guest-physical space ([`layout`]), the options
//! gmemctl adds for gmemd memory and the memory kinds QEMU can map
//! ([`cmdline`]), and the fd numbers and gmemd slots every QEMU of a VM
//! uses. High fd numbers keep clear of fds the user passes to QEMU
//! (`-add-fd`, `fd=` options).

pub mod args;
pub mod cmdline;
pub mod layout;

use std::os::fd::RawFd;

/// fd number of the lease socket inside QEMU.
pub const LEASE_FD: RawFd = 200;
/// fd number of the main RAM memory file inside QEMU.
pub const RAM_FD: RawFd = 201;
/// fd number of the first DIMM file inherited by an upgrade target.
pub const DIMM_FD_BASE: RawFd = 210;
/// gmemd ledger slot of main RAM's first binding (the second is +1).
pub const MAIN_SLOT: u32 = 0;
/// gmemd ledger slot of the DIMM in pc-dimm slot 0 (slot K is +K).
pub const DIMM_SLOT_BASE: u32 = 16;
