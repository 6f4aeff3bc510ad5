//! The raw baselines of the prefault rows: populating SIZE bytes in this
//! process with nothing but kernel calls, each on fresh memory that is
//! freed (its fds closed, unmapped) before the next run.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{fallocate, ftruncate, memfd_create, FallocateFlags, MemfdFlags};

use crate::mapping::Mapping;

/// A raw way to populate memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFill {
    /// `fallocate` of one memfd over `threads` threads, each a slice of the
    /// range (1 thread: the whole range in one call).
    OneMemfd { threads: usize },
    /// `threads` memfds of SIZE/threads, each `fallocate`d by a thread of
    /// its own.
    Memfds { threads: usize },
    /// `MADV_POPULATE_WRITE` of a `MAP_SHARED` mapping of one memfd, one
    /// thread: how a VMM populates a file it mapped.
    PopulateWrite,
    /// A single-threaded `memset` (every byte written) of fresh anonymous
    /// memory: what a program that never heard of prefaulting pays.
    MemsetAnonymous,
}

impl RawFill {
    /// A name for the tables.
    pub fn label(self) -> String {
        match self {
            RawFill::OneMemfd { threads: 1 } => "fallocate, 1 memfd, 1 thread".to_owned(),
            RawFill::OneMemfd { threads } => format!("fallocate, 1 memfd, {threads} threads"),
            RawFill::Memfds { threads } => {
                format!("fallocate, {threads} memfds, {threads} threads")
            }
            RawFill::PopulateWrite => "MADV_POPULATE_WRITE, MAP_SHARED memfd, 1 thread".to_owned(),
            RawFill::MemsetAnonymous => {
                "memset of every byte, anonymous memory, 1 thread".to_owned()
            }
        }
    }

    /// Whether it is a layout of `fallocate` (the "best raw layout" is the
    /// fastest of those).
    pub fn is_fallocate(self) -> bool {
        matches!(self, RawFill::OneMemfd { .. } | RawFill::Memfds { .. })
    }

    /// Populates `size` bytes this way; returns how long it took. The
    /// memory is freed before this returns.
    ///
    /// # Errors
    /// A failing system call, named.
    pub fn run(self, size: u64) -> Result<Duration, String> {
        let len =
            usize::try_from(size).map_err(|_| format!("{size} bytes do not fit in memory"))?;
        match self {
            RawFill::OneMemfd { threads } => {
                let fd = memfd(size)?;
                let started = Instant::now();
                split(size, threads, |_, offset, len| {
                    fallocate(&fd, FallocateFlags::empty(), offset, len)
                })?;
                Ok(started.elapsed())
            }
            RawFill::Memfds { threads } => {
                let part = size / threads as u64;
                let fds = (0..threads)
                    .map(|_| memfd(part))
                    .collect::<Result<Vec<_>, _>>()?;
                let started = Instant::now();
                split(size, threads, |i, _, len| {
                    fallocate(&fds[i], FallocateFlags::empty(), 0, len)
                })?;
                Ok(started.elapsed())
            }
            RawFill::PopulateWrite => {
                let fd = memfd(size)?;
                let started = Instant::now();
                let mapping = Mapping::shared(fd.as_fd(), len)?;
                mapping.populate_write()?;
                Ok(started.elapsed())
            }
            RawFill::MemsetAnonymous => {
                let started = Instant::now();
                let mut mapping = Mapping::anonymous(len)?;
                // Not zero: a zero page would do for reads, writes of any
                // value fault a page in all the same, but say what we mean.
                mapping.fill(1);
                Ok(started.elapsed())
            }
        }
    }
}

fn memfd(size: u64) -> Result<OwnedFd, String> {
    let fd = memfd_create("gmem-bench", MemfdFlags::CLOEXEC)
        .map_err(|e| format!("memfd_create: {e}"))?;
    // Sized first, as gmemd's files are: fallocate then only populates.
    ftruncate(&fd, size).map_err(|e| format!("ftruncate to {size}: {e}"))?;
    Ok(fd)
}

/// Runs `work(index, offset, len)` for `parts` equal slices of `size`
/// bytes (the last takes the rest), each on a thread of its own.
fn split(
    size: u64,
    parts: usize,
    work: impl Fn(usize, u64, u64) -> rustix::io::Result<()> + Sync,
) -> Result<(), String> {
    let part = size / parts as u64;
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..parts)
            .map(|i| {
                let offset = part * i as u64;
                let len = if i + 1 == parts { size - offset } else { part };
                let work = &work;
                scope.spawn(move || work(i, offset, len))
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| "a fallocate thread panicked".to_owned())?
                .map_err(|e| format!("fallocate: {e}"))?;
        }
        Ok(())
    })
}
