//! Taking back passed fds: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`
//! (`sd_listen_fds_with_names(3)`), from systemd or the keeper.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::env_number;

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// Whether this process took its passed fds already: they are owned once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The fds passed to this process, with their names, as owned fds with
/// `FD_CLOEXEC` set, in the order passed (fds 3, 4, …). Empty when none were
/// passed, when they were passed to another process (`LISTEN_PID`), and on
/// every call after the first.
///
/// It removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the
/// environment, so no child inherits them; like any change to the
/// environment, call it before other threads start. A missing or short
/// `LISTEN_FDNAMES` names the rest `unknown`, as systemd does.
///
/// # Errors
/// A variable that is not a number ([`super::FdStoreError::BadNumber`]); the
/// variables are removed all the same. An announced fd that is not open is
/// skipped with a warning.
pub fn listen_fds() -> std::io::Result<Vec<(String, OwnedFd)>> {
    let pid = env_number("LISTEN_PID");
    let count = env_number("LISTEN_FDS");
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(count)) = (pid?, count?) else {
        return Ok(Vec::new());
    };
    if pid != u64::from(std::process::id()) || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let names = names_for(count, names.as_deref());
    let mut fds = Vec::with_capacity(count);
    for (fd, name) in (FIRST_FD..).zip(names) {
        // SAFETY: fcntl on any int is memory-safe; it only reports EBADF
        // for a number that is not an open fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            // Not ours to invent: take the others rather than none.
            log::warn!("LISTEN_FDS={count} but fd {fd} ({name}) is not open; skipped");
            continue;
        }
        // SAFETY: `fd` is open (checked above) and was passed to this
        // process (LISTEN_PID) for it to own; TAKEN makes this the only
        // place that takes it, once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if flags & libc::FD_CLOEXEC == 0 {
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        }
        fds.push((name, owned));
    }
    Ok(fds)
}

/// `count` names from a `LISTEN_FDNAMES` value, padded with `unknown`.
fn names_for(count: usize, names: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter(|n| !n.is_empty())
        .map(|n| n.split(':').take(count).map(str::to_owned).collect())
        .unwrap_or_default();
    if out.len() < count {
        log::warn!(
            "LISTEN_FDNAMES names {} of {count} passed fds; the rest are `unknown`",
            out.len()
        );
        out.resize(count, "unknown".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pair_with_fds() {
        assert_eq!(names_for(2, Some("listen:f1")), ["listen", "f1"]);
        assert_eq!(names_for(0, None), Vec::<String>::new());
        assert_eq!(names_for(3, Some("a")), ["a", "unknown", "unknown"]);
        assert_eq!(names_for(2, None), ["unknown", "unknown"]);
        assert_eq!(
            names_for(1, Some("a:b:c")),
            ["a"],
            "extra names are ignored"
        );
        assert_eq!(names_for(1, Some("")), ["unknown"]);
    }
}
