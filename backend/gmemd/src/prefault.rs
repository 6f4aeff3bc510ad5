//! Prefault: populating files CREATEd with `PREFAULT` on worker threads
//! (`--prefault-threads`, default one per core), so the event loop replies
//! at once and keeps serving while the kernel zeroes pages.
//!
//! Work is handed out in [`CHUNK`]s; a free worker takes a chunk of the
//! job with the fewest workers on it, so two files go to two threads (the
//! kernel serializes `fallocate` of one file, so two threads on one file
//! gain nothing). A job is cancelled when its file leaves the ledger or
//! gets a fresh inode; its worker stops at the next chunk.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use gmem_protocol::wire::FillState;
use log::{debug, warn};
use rustix::io::Errno;

use crate::memory::populate::{populate, CHUNK};

/// One file being populated.
#[derive(Debug)]
pub struct Job {
    fd: OwnedFd,
    size: u64,
    /// Bytes of chunks that finished.
    populated: AtomicU64,
    cancelled: AtomicBool,
    /// How chunks are handed out; under [`Shared::queue`]'s lock.
    claim: Mutex<Claim>,
}

#[derive(Debug, Default)]
struct Claim {
    /// The next offset no worker took yet.
    next: u64,
    /// Workers on this job now.
    active: usize,
    /// The errno that stopped it.
    failed: Option<Errno>,
}

impl Job {
    /// Bytes populated so far and the state.
    pub fn progress(&self) -> (u64, FillState) {
        let populated = self.populated.load(Ordering::Acquire);
        let claim = lock(&self.claim);
        let state = match claim.failed {
            Some(e) => FillState::Failed(e.raw_os_error().unsigned_abs()),
            None if populated >= self.size => FillState::Populated,
            None => FillState::Prefaulting,
        };
        (populated.min(self.size), state)
    }

    /// Stops the job at its next chunk.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn has_work(&self) -> bool {
        let claim = lock(&self.claim);
        claim.failed.is_none() && claim.next < self.size && !self.cancelled.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Vec<Arc<Job>>>,
    wake: Condvar,
}

/// The prefault workers and their jobs.
#[derive(Debug)]
pub struct Prefaulter {
    shared: Arc<Shared>,
    threads: usize,
    spawned: usize,
}

impl Prefaulter {
    /// Up to `threads` workers, started with the first job.
    pub fn new(threads: usize) -> Self {
        Prefaulter {
            shared: Arc::default(),
            threads: threads.max(1),
            spawned: 0,
        }
    }

    /// Populates `size` bytes of `fd` (gmemd's own fd of the file, or a
    /// duplicate) in the background.
    pub fn submit(&mut self, fd: OwnedFd, size: u64) -> Arc<Job> {
        let job = Arc::new(Job {
            fd,
            size,
            populated: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            claim: Mutex::default(),
        });
        lock(&self.shared.queue).push(Arc::clone(&job));
        self.shared.wake.notify_all();
        while self.spawned < self.threads {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("gmemd-prefault-{}", self.spawned))
                .spawn(move || work(&shared));
            if let Err(e) = spawned {
                // The ones running take the work.
                warn!("starting a prefault thread: {e}");
                if self.spawned > 0 {
                    break;
                }
                // None at all: populate here rather than never.
                work_inline(&job);
                break;
            }
            self.spawned += 1;
        }
        job
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked left nothing half-changed that matters here.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the next chunk: of the job with the fewest workers on it.
fn next_chunk(queue: &mut Vec<Arc<Job>>) -> Option<(Arc<Job>, u64, u64)> {
    queue.retain(|job| job.has_work());
    let job = queue
        .iter()
        .min_by_key(|job| lock(&job.claim).active)?
        .clone();
    let mut claim = lock(&job.claim);
    let offset = claim.next;
    let len = CHUNK.min(job.size - offset);
    claim.next += len;
    claim.active += 1;
    drop(claim);
    Some((job, offset, len))
}

fn work(shared: &Shared) {
    loop {
        let mut queue = lock(&shared.queue);
        let chunk = loop {
            if let Some(chunk) = next_chunk(&mut queue) {
                break chunk;
            }
            queue = shared
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(queue);
        run_chunk(&chunk.0, chunk.1, chunk.2);
    }
}

fn run_chunk(job: &Job, offset: u64, len: u64) {
    let result = if job.cancelled.load(Ordering::Acquire) {
        Ok(())
    } else {
        populate(job.fd.as_fd(), offset, len)
    };
    let mut claim = lock(&job.claim);
    claim.active -= 1;
    match result {
        Ok(()) => {
            job.populated.fetch_add(len, Ordering::AcqRel);
        }
        Err(e) => {
            debug!("prefault stopped at offset {offset:#x}: {e}");
            claim.failed.get_or_insert(e);
        }
    }
}

/// Every chunk of `job` on this thread.
fn work_inline(job: &Job) {
    while job.has_work() {
        let (offset, len) = {
            let mut claim = lock(&job.claim);
            let offset = claim.next;
            let len = CHUNK.min(job.size - offset);
            claim.next += len;
            claim.active += 1;
            (offset, len)
        };
        run_chunk(job, offset, len);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rustix::fs::MemfdFlags;

    use super::*;

    fn memfd(size: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("prefault", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    }

    fn wait_done(job: &Job) -> FillState {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, state) = job.progress();
            if state != FillState::Prefaulting || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn resident(fd: &OwnedFd) -> u64 {
        u64::try_from(rustix::fs::fstat(fd).unwrap().st_blocks).unwrap() * 512
    }

    #[test]
    fn jobs_populate_every_page_of_several_files() {
        let mut prefaulter = Prefaulter::new(2);
        let sizes = [CHUNK * 3 + (2 << 20), 4 << 20, CHUNK];
        let files: Vec<OwnedFd> = sizes.iter().map(|&s| memfd(s)).collect();
        let jobs: Vec<_> = files
            .iter()
            .zip(sizes)
            .map(|(fd, size)| prefaulter.submit(fd.try_clone().unwrap(), size))
            .collect();
        for ((job, fd), size) in jobs.iter().zip(&files).zip(sizes) {
            assert_eq!(wait_done(job), FillState::Populated);
            assert_eq!(job.progress().0, size);
            assert_eq!(resident(fd), size);
        }
    }

    #[test]
    fn a_cancelled_job_stops() {
        let mut prefaulter = Prefaulter::new(1);
        let size = CHUNK * 64;
        let fd = memfd(size);
        let job = prefaulter.submit(fd.try_clone().unwrap(), size);
        job.cancel();
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&job.claim).active > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!job.has_work());
        assert!(resident(&fd) < size, "a cancelled job went on to the end");
    }

    #[test]
    fn a_failing_job_says_why() {
        let mut prefaulter = Prefaulter::new(1);
        // A read-only fd: fallocate fails with EBADF.
        let fd = memfd(4 << 20);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let ro: OwnedFd = std::fs::File::open(path).unwrap().into();
        let job = prefaulter.submit(ro, 4 << 20);
        assert!(matches!(wait_done(&job), FillState::Failed(e) if e != 0));
    }
}
