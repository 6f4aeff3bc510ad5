//! Starting the serving process with the stored fds at 3, 4, … and
//! `LISTEN_PID` set to its own pid, which only the child knows: so the
//! keeper forks and execs itself (not `std::process::Command`), and the child
//! runs only async-signal-safe calls between the two, into memory prepared
//! before the fork.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libc::c_char;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::fdstore::listen::FIRST_FD;

/// Variables the keeper sets itself: inherited values are dropped.
const OWN_VARS: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    crate::fdstore::FDSTORE_ENV,
    crate::fdstore::RESTARTS_ENV,
];

/// Room for `LISTEN_PID=` and a pid, and its NUL.
const PID_ENTRY: usize = "LISTEN_PID=".len() + 21;

/// A started child: its pid, and a pidfd that becomes readable when it exits.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: Pid,
    /// A pidfd on it (signals and `waitid` through it cannot hit a reused pid).
    pub pidfd: OwnedFd,
}

/// Starts `program` with `args` (`argv[0]` is `program`), this process's
/// environment less [`OWN_VARS`] plus `env`, and `fds` at 3, 4, … described
/// by `LISTEN_FDS`, `LISTEN_FDNAMES` = `names` and `LISTEN_PID`. The child
/// starts with no signal blocked and `SIGPIPE` at its default; every other
/// fd of this process must be close-on-exec.
///
/// # Errors
/// Preparing (a NUL in an argument) or the fork, or the exec's error
/// reported back from the child (which is then reaped).
pub fn spawn(
    program: &Path,
    args: &[OsString],
    env: &[(&str, String)],
    fds: &[BorrowedFd<'_>],
    names: &str,
) -> io::Result<Spawned> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let path = c(program.as_os_str())?;
    let argv: Vec<CString> = std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(c)
        .collect::<io::Result<_>>()?;
    let mut envs: Vec<CString> = Vec::new();
    for (key, value) in std::env::vars_os() {
        if !OWN_VARS.iter().any(|own| key == *own) {
            let mut entry = key;
            entry.push("=");
            entry.push(value);
            envs.push(c(&entry)?);
        }
    }
    for (key, value) in env {
        envs.push(c(OsStr::new(&format!("{key}={value}")))?);
    }
    // LISTEN_PID's digits are written by the child, into this buffer.
    let mut pid_entry = vec![0u8; PID_ENTRY];
    pid_entry[.."LISTEN_PID=".len()].copy_from_slice(b"LISTEN_PID=");
    if !fds.is_empty() {
        envs.push(c(OsStr::new(&format!("LISTEN_FDS={}", fds.len())))?);
        envs.push(c(OsStr::new(&format!("LISTEN_FDNAMES={names}")))?);
    }
    let pid_digits = pid_entry.as_mut_ptr();
    let mut envp: Vec<*const c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    if !fds.is_empty() {
        envp.push(pid_digits.cast_const().cast());
    }
    envp.push(std::ptr::null());
    let mut argvp: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argvp.push(std::ptr::null());

    let above = RawFd::try_from(fds.len())
        .ok()
        .and_then(|n| FIRST_FD.checked_add(n))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // The pipe the child reports an exec failure on, above every target fd
    // so that placing the stored fds cannot overwrite it.
    let (report_read, low_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let report_write = rustix::io::fcntl_dupfd_cloexec(&low_write, above)?;
    // Only the child may hold a write end, or the read below never ends.
    drop(low_write);
    let sources: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut placement = crate::fdstore::place::Placement::new(sources)?;
    let plan = Plan {
        path: path.as_ptr(),
        argv: argvp.as_ptr(),
        envp: envp.as_ptr(),
        pid_digits: (!fds.is_empty()).then_some(pid_digits),
        placement: &mut placement,
        report: report_write.as_raw_fd(),
    };
    // SAFETY: fork has no memory-safety preconditions of its own. The child
    // only runs `exec_child`, which makes async-signal-safe calls on memory
    // prepared above (nothing is allocated or locked), and execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child right after fork; see `exec_child`.
        unsafe { exec_child(plan) }
    }
    drop(report_write);
    let pid = Pid::from_raw(pid).expect("fork returned a positive pid");
    if let Some(errno) = read_report(report_read.as_fd()) {
        reap(pid);
        return Err(io::Error::from_raw_os_error(errno));
    }
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => Ok(Spawned { pid, pidfd }),
        Err(e) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            reap(pid);
            Err(e.into())
        }
    }
}

/// Everything the child needs, prepared before the fork.
struct Plan<'a> {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// The `LISTEN_PID=` entry, digits to be written at its end.
    pid_digits: Option<*mut u8>,
    placement: &'a mut crate::fdstore::place::Placement,
    report: RawFd,
}

/// The child's side: move the stored fds out of the way, place them at
/// 3, 4, … (dup2 clears close-on-exec), write `LISTEN_PID`, unblock signals,
/// reset `SIGPIPE` and exec; on a failure report errno and `_exit(127)`.
///
/// # Safety
/// Only in the child of a fork, with `plan` pointing into memory prepared
/// before it: it calls only async-signal-safe functions and never returns.
unsafe fn exec_child(plan: Plan<'_>) -> ! {
    // SAFETY: each call is async-signal-safe and gets valid arguments:
    // open fds or plain numbers, pointers into `plan`'s buffers (argv and
    // envp NULL-terminated, the pid entry PID_ENTRY bytes long), and a
    // local sigset.
    unsafe {
        if plan.placement.place().is_err() {
            fail(plan.report);
        }
        if let Some(entry) = plan.pid_digits {
            write_pid(entry.add("LISTEN_PID=".len()), libc::getpid());
        }
        let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(plan.path, plan.argv, plan.envp);
        fail(plan.report)
    }
}

/// Writes `pid` in decimal and a NUL at `at` (room for 21 bytes).
///
/// # Safety
/// `at` must be valid for 21 bytes of writes.
unsafe fn write_pid(at: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; 20];
    let mut n = u64::try_from(pid).unwrap_or(0);
    let mut len = 0;
    loop {
        // `n % 10` is below 10.
        digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: i < len <= 20 < 21 bytes the caller vouches for.
        unsafe { *at.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: len <= 20, within the 21 bytes.
    unsafe { *at.add(len) = 0 };
}

/// Reports errno on `report` and exits the child.
///
/// # Safety
/// Only in the forked child (it `_exit`s without running destructors).
unsafe fn fail(report: RawFd) -> ! {
    // SAFETY: errno location is thread-local and always valid; write and
    // _exit are async-signal-safe; the buffer is 4 valid bytes.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// The errno the child reported, or `None` once the pipe closes on exec.
fn read_report(fd: BorrowedFd<'_>) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}

/// Waits for `pid` to exit and reaps it.
fn reap(pid: Pid) {
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
}

#[cfg(test)]
mod tests;
