//! The keeper's dealings with the host: its notify socket, its fd limit
//! and inherited fds, and how a child's end is told.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use rustix::net::{
    bind, socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::process::WaitIdStatus;

/// The keeper's own exit status for a child's: its code, or 128 + signal.
pub fn exit_code(status: &WaitIdStatus) -> ExitCode {
    let code = status
        .exit_status()
        .or_else(|| status.terminating_signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// "exited with status N" or "was killed by SIGX".
pub fn describe(status: &WaitIdStatus) -> String {
    if let Some(code) = status.exit_status() {
        return format!("exited with status {code}");
    }
    let signal = status.terminating_signal().unwrap_or(0);
    let core = if status.dumped() {
        " (core dumped)"
    } else {
        ""
    };
    format!("was killed by {}{core}", signal_name(signal))
}

/// `SIGTERM` for 15, and so on for the signals a keeper sees.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGSYS => "SIGSYS",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

/// A non-blocking notify socket under a fresh abstract name that asks for
/// senders' credentials; returns it and its `NOTIFY_SOCKET` value.
pub fn notify_socket() -> io::Result<(OwnedFd, String)> {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_passcred(&socket, true)?;
    // Queued messages hold their fds: leave room for bursts of stores.
    sockopt::set_socket_recv_buffer_size(&socket, 1 << 20)?;
    let mut attempt = 0u32;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("gmemd-keeper/{}/{nanos:x}", std::process::id());
        match bind(
            &socket,
            &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
        ) {
            Ok(()) => return Ok((socket, format!("@{name}"))),
            Err(rustix::io::Errno::ADDRINUSE) if attempt < 16 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Marks every fd from `first` up close-on-exec.
pub fn close_on_exec_from(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on open fds in the range.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Before Linux 5.11: one by one.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| u32::try_from(*fd).is_ok_and(|fd| fd >= first))
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a number that may or may not be open is
        // memory-safe; it only changes that fd's close-on-exec flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Every stored fd costs one: use the hard limit of open files.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            log::warn!("keeper: cannot raise RLIMIT_NOFILE: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notify_socket_has_a_fresh_abstract_name() {
        let (_a, name_a) = notify_socket().unwrap();
        let (_b, name_b) = notify_socket().unwrap();
        assert!(name_a.starts_with("@gmemd-keeper/"), "{name_a}");
        assert_ne!(name_a, name_b);
        assert!(crate::fdstore::notify::parse_address(&name_a).is_ok());
    }

    #[test]
    fn signals_have_names() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }
}
