//! QEMU's command line: the user's arguments checked ([`args`]), where the
//! machine type maps RAM in guest-physical space ([`layout`]), and the
//! options gmemctl adds for gmemd memory ([`cmdline`]).

pub mod args;
pub mod cmdline;
pub mod layout;
