//! Restarting gmemd in place (`gmemctl restart`, SIGHUP): the process
//! execs the gmemd binary found at its path now (a new release, say) and
//! hands it every fd it must keep, the way systemd hands stored fds over:
//! at 3 and up, named by `LISTEN_FDNAMES`, counted by `LISTEN_FDS`, for
//! `LISTEN_PID`, which exec keeps. The journal carries the rest. Requests
//! that arrive meanwhile wait in their sockets and are answered after.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The path gmemd was started from, read once at start: after an upgrade
/// in place it names the new binary (while `/proc/self/exe` names the old,
/// deleted one).
pub fn binary_path() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::current_exe()
            .map(|p| {
                let text = p.to_string_lossy();
                std::path::PathBuf::from(text.trim_end_matches(" (deleted)"))
            })
            .unwrap_or_else(|_| std::path::PathBuf::from("/proc/self/exe"))
    })
    .clone()
}

/// Execs `exe` with `args` and `fds` (name, fd) handed over. Returns only
/// if the exec failed; by then the fds at 3 and up have been rearranged,
/// so the caller must exit (whatever keeps gmemd's fds starts it again).
pub fn exec_with_fds(exe: &Path, args: &[OsString], fds: &[(String, RawFd)]) -> io::Error {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let prepared = (|| -> io::Result<(CString, Vec<CString>)> {
        let exe_c = c(exe.as_os_str().as_bytes())?;
        let mut argv = vec![exe_c.clone()];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        Ok((exe_c, argv))
    })();
    let (exe_c, argv) = match prepared {
        Ok(p) => p,
        Err(e) => return e,
    };
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    std::env::set_var("LISTEN_FDS", fds.len().to_string());
    std::env::set_var("LISTEN_FDNAMES", names.join(":"));
    std::env::set_var("LISTEN_PID", std::process::id().to_string());
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut placement =
        match crate::fdstore::place::Placement::new(fds.iter().map(|(_, fd)| *fd).collect()) {
            Ok(p) => p,
            Err(e) => return e,
        };
    // SAFETY: this process execs right after (or exits if that fails).
    if let Err(errno) = unsafe { placement.place() } {
        return io::Error::from_raw_os_error(errno);
    }
    // The new gmemd blocks what it needs itself.
    // SAFETY: an empty, initialized set; unblocking is always allowed.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated string that lives
    // across the call, and both arrays end with NULL.
    unsafe {
        libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
    }
    io::Error::last_os_error()
}
