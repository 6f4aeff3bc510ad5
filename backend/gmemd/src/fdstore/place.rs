//! Putting n fds at 3, 4, … for an exec without ever holding twice as many:
//! with 10,000 memory files and 1,000 connections, copying every fd out of
//! the way first would need 22,000 fds, past gmemd's limit. Each fd is
//! moved once, and only the fd sitting in a slot still needed is copied.
//! [`Placement::place`] is async-signal-safe: everything is allocated by
//! [`Placement::new`], before the fork.

use std::io;
use std::os::fd::RawFd;

/// The first fd handed over (`SD_LISTEN_FDS_START`).
pub const FIRST: RawFd = 3;

/// A plan to place fds at [`FIRST`] and up.
#[derive(Debug, Clone)]
pub struct Placement {
    sources: Vec<RawFd>,
    placed: Vec<bool>,
    chain: Vec<usize>,
    /// For each fd number: the index of the source it holds, or -1.
    owner: Vec<i64>,
    /// Copies go at or above this: past every target slot.
    above: RawFd,
}

impl Placement {
    /// A plan for `sources`, in their order.
    ///
    /// # Errors
    /// `EMFILE` when they cannot be numbered.
    pub fn new(sources: Vec<RawFd>) -> io::Result<Self> {
        let n = RawFd::try_from(sources.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EMFILE))?;
        let above = FIRST + n;
        let top = sources.iter().copied().max().unwrap_or(0).max(above);
        // Room for every fd number a copy may get.
        let size = usize::try_from(top).unwrap_or(0) + sources.len() + 64;
        let mut owner = vec![-1i64; size];
        for (i, src) in sources.iter().enumerate() {
            if let Some(slot) = usize::try_from(*src).ok().and_then(|s| owner.get_mut(s)) {
                *slot = i64::try_from(i).unwrap_or(-1);
            }
        }
        Ok(Placement {
            placed: vec![false; sources.len()],
            chain: Vec::with_capacity(sources.len()),
            sources,
            owner,
            above,
        })
    }

    /// Places every source at its slot (close-on-exec cleared there) and
    /// closes the copies it made. Async-signal-safe.
    ///
    /// Sources that sit in one another's slots form chains and cycles of
    /// the permutation: a chain is placed from its end (each move frees the
    /// slot the next one needs), a cycle is opened with one copy. So at
    /// most one fd more than the sources is ever held.
    ///
    /// # Errors
    /// The errno of the failing call.
    ///
    /// # Safety
    /// Only in a process about to exec (or exit): fds at the target slots
    /// are replaced, whoever else uses them.
    pub unsafe fn place(&mut self) -> Result<(), i32> {
        let errno = || {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        };
        let n = self.sources.len();
        for start in 0..n {
            if self.placed[start] {
                continue;
            }
            // Follow who sits in the slot each source needs.
            self.chain.clear();
            let mut k = start;
            loop {
                self.chain.push(k);
                match self.owner_of(slot(k)) {
                    Some(j) if j == start && k != start => {
                        // A cycle: copy the first source out of the way.
                        // SAFETY: fcntl on an fd this process holds.
                        let copy = unsafe {
                            libc::fcntl(self.sources[start], libc::F_DUPFD_CLOEXEC, self.above)
                        };
                        if copy < 0 {
                            return Err(errno());
                        }
                        self.clear_owner(self.sources[start]);
                        self.sources[start] = copy;
                        self.set_owner(copy, start);
                        break;
                    }
                    Some(j) if j != k && !self.placed[j] => k = j,
                    _ => break,
                }
            }
            // Place from the end: each frees the slot of the one before.
            for c in (0..self.chain.len()).rev() {
                let i = self.chain[c];
                let (src, target) = (self.sources[i], slot(i));
                if src == target {
                    // SAFETY: F_SETFD on an fd this process holds.
                    if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } < 0 {
                        return Err(errno());
                    }
                } else {
                    // SAFETY: dup2 between fds this process holds; the
                    // target does not carry close-on-exec.
                    if unsafe { libc::dup2(src, target) } < 0 {
                        return Err(errno());
                    }
                    self.clear_owner(src);
                    if src >= self.above {
                        // SAFETY: a copy made here, or a source past every
                        // slot: nothing uses it after the exec.
                        unsafe { libc::close(src) };
                    }
                }
                self.clear_owner(target);
                self.placed[i] = true;
            }
        }
        Ok(())
    }

    fn owner_of(&self, fd: RawFd) -> Option<usize> {
        let i = *self.owner.get(usize::try_from(fd).ok()?)?;
        usize::try_from(i).ok()
    }

    fn set_owner(&mut self, fd: RawFd, i: usize) {
        if let Some(slot) = usize::try_from(fd).ok().and_then(|f| self.owner.get_mut(f)) {
            *slot = i64::try_from(i).unwrap_or(-1);
        }
    }

    fn clear_owner(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd).ok().and_then(|f| self.owner.get_mut(f)) {
            *slot = -1;
        }
    }
}

/// The slot of source `i`.
fn slot(i: usize) -> RawFd {
    // Fits: `Placement::new` numbered every source.
    FIRST + RawFd::try_from(i).unwrap_or(RawFd::MAX - FIRST)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};

    use super::*;

    /// Runs `check` in a forked child (placement rearranges fds 3 and up);
    /// the child exits 0 when it holds.
    fn in_child(check: impl FnOnce() -> bool) -> bool {
        // SAFETY: the child only runs `check` (syscalls on fds) and exits.
        match unsafe { libc::fork() } {
            0 => {
                let ok = check();
                // SAFETY: leaving the child without running destructors.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }

    fn ino(fd: RawFd) -> u64 {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat into a local buffer.
        unsafe {
            libc::fstat(fd, st.as_mut_ptr());
            st.assume_init().st_ino
        }
    }

    #[test]
    fn sources_land_in_order_whatever_slots_they_sat_in() {
        // Files, some of them sitting where others must go.
        let files: Vec<OwnedFd> = (0..40)
            .map(|i| {
                rustix::fs::memfd_create(format!("p{i}"), rustix::fs::MemfdFlags::CLOEXEC).unwrap()
            })
            .collect();
        let mut sources: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        sources.reverse();
        let inos: Vec<u64> = sources.iter().map(|f| ino(*f)).collect();
        assert!(in_child(move || {
            let mut plan = Placement::new(sources).unwrap();
            // SAFETY: in a forked child that exits right after.
            if unsafe { plan.place() }.is_err() {
                return false;
            }
            inos.iter().enumerate().all(|(i, want)| {
                let fd = slot(i);
                // SAFETY: F_GETFD on a slot number.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                flags == 0 && ino(fd) == *want
            })
        }));
        drop(files);
    }

    #[test]
    fn placing_never_holds_many_more_fds_than_it_places() {
        let files: Vec<OwnedFd> = (0..200)
            .map(|i| {
                rustix::fs::memfd_create(format!("q{i}"), rustix::fs::MemfdFlags::CLOEXEC).unwrap()
            })
            .collect();
        let sources: Vec<RawFd> = files.iter().rev().map(AsRawFd::as_raw_fd).collect();
        let top = sources.iter().copied().max().unwrap();
        assert!(in_child(move || {
            // One fd more than the highest source, no more.
            let cap = libc::rlim_t::try_from(top + 2).unwrap();
            let limit = libc::rlimit {
                rlim_cur: cap,
                rlim_max: cap,
            };
            // SAFETY: lowering our own limit in the child.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
            let mut plan = Placement::new(sources).unwrap();
            // SAFETY: in a forked child that exits right after.
            unsafe { plan.place() }.is_ok()
        }));
        drop(files);
    }
}
