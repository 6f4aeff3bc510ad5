//! SIGTERM/SIGINT as readable events: the signals are blocked and delivered
//! through a signalfd the event loop polls, so no handler runs at a random
//! point of the daemon's work.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vmm_sys_util::signal::{block_signal, create_sigset};

/// Blocks SIGTERM and SIGINT for this thread (call before spawning threads)
/// and returns a signalfd that reports them.
///
/// # Errors
/// The failing syscall.
pub fn termination_fd() -> io::Result<OwnedFd> {
    let signals = [libc::SIGTERM, libc::SIGINT];
    for signal in signals {
        block_signal(signal)
            .map_err(|e| io::Error::other(format!("blocking signal {signal}: {e}")))?;
    }
    let set = create_sigset(&signals).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `set` is a valid, initialized sigset living across the call;
    // -1 asks for a new fd, which the kernel returns or fails.
    let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is the new signalfd returned just above; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reads one pending signal number from a signalfd (0 if none).
pub fn read_signal(fd: BorrowedFd<'_>) -> u32 {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    match rustix::io::read(fd, &mut info) {
        // ssi_signo is the first u32 of signalfd_siginfo.
        Ok(n) if n == info.len() => u32::from_ne_bytes([info[0], info[1], info[2], info[3]]),
        _ => {
            log::debug!("signalfd {} had nothing to read", fd.as_raw_fd());
            0
        }
    }
}
