//! Signals as readable events: they are blocked and delivered through a
//! signalfd that an event loop polls, so no handler runs at a random point
//! of the program's work. The daemon uses it for SIGTERM/SIGINT, the
//! launcher for the signals it forwards to QEMU.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vmm_sys_util::signal::create_sigset;

/// Blocks `signals` in the calling thread (call it before spawning threads
/// or children, so none is lost) and returns a non-blocking signalfd that
/// reports them.
///
/// # Errors
/// The failing syscall.
pub fn signal_fd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = create_sigset(signals).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `set` is an initialized sigset that outlives the call; the old
    // mask is not asked for (null). Blocking a blocked signal is harmless.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `set` is a valid, initialized sigset living across the call;
    // -1 asks for a new fd, which the kernel returns or fails.
    let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is the new signalfd returned just above; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Blocks SIGTERM and SIGINT and returns a signalfd reporting them.
///
/// # Errors
/// As [`signal_fd`].
pub fn termination_fd() -> io::Result<OwnedFd> {
    signal_fd(&[libc::SIGTERM, libc::SIGINT])
}

/// Blocks SIGTERM, SIGINT and SIGHUP (restart in place) and returns a
/// signalfd reporting them.
///
/// # Errors
/// As [`signal_fd`].
pub fn daemon_fd() -> io::Result<OwnedFd> {
    signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_fd() {
        // SIGUSR2 only: other tests in this process own TERM and INT.
        let fd = signal_fd(&[libc::SIGUSR2]).unwrap();
        assert_eq!(read_signal(fd.as_fd()), 0, "nothing pending yet");
        // SAFETY: raise has no memory-safety preconditions; the signal is
        // blocked in this thread, so it stays pending for the signalfd.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        assert_eq!(
            read_signal(fd.as_fd()),
            u32::try_from(libc::SIGUSR2).unwrap()
        );
    }
}
