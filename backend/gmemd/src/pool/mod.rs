//! Warm pools (`--pool SIZE[:KIND]xCOUNT`): prefaulted, zeroed files made
//! ahead of time, so a CREATE of that size and kind gets populated memory
//! at once.
//!
//! A pool file is made by gmemd and held only by gmemd (and its fd keeper)
//! until a CREATE takes it: no process outside gmemd ever had an fd of it,
//! so handing it to any VM keeps invariant 6. Nothing comes back into a
//! pool: memory of a destroyed file is freed with its inode, and a pool
//! refills with fresh files only.
//!
//! Every decision is made here, on the event loop (what to fill, whether
//! `--max-memory` and `--max-files` leave room); the filler thread
//! only makes the memory, one file at a time at idle priority. Ready files
//! are kept and journaled like every file (`f<id>`, a pool record), so a
//! pool survives a gmemd restart.

mod filler;
mod spec;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmem_protocol::wire::{FillState, FillStatus, FillSubject, MemoryKind};
use log::warn;

pub use spec::PoolSpec;

/// How long a pool waits after a file it could not make.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// A ready pool file: its id (`f<id>` in the fd keeper) and gmemd's fd.
#[derive(Debug)]
pub struct PoolFile {
    /// Its id.
    pub fid: u64,
    /// gmemd's fd of it.
    pub fd: OwnedFd,
}

/// A file the filler finished, for the service to adopt (give it an id,
/// keep and journal it) with [`Pool::add_ready`].
#[derive(Debug)]
pub struct Finished {
    /// Which pool.
    pub pool: usize,
    /// The file.
    pub fd: OwnedFd,
}

#[derive(Debug)]
struct Filling {
    pool: usize,
    progress: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Filler {
    orders: Sender<filler::Order>,
    filled: Receiver<filler::Filled>,
}

/// The pools and their ready files.
#[derive(Debug)]
pub struct Pool {
    specs: Vec<PoolSpec>,
    ready: Vec<Vec<PoolFile>>,
    filling: Option<Filling>,
    filler: Option<Filler>,
    numa_node: Option<u32>,
    retry_at: Option<Instant>,
}

impl Pool {
    /// Pools as `specs` say; the filler starts with the first order.
    pub fn new(specs: Vec<PoolSpec>, numa_node: Option<u32>) -> Self {
        Pool {
            ready: specs.iter().map(|_| Vec::new()).collect(),
            specs,
            filling: None,
            filler: None,
            numa_node,
            retry_at: None,
        }
    }

    /// Bytes the pools hold: ready files and the one being filled.
    pub fn bytes(&self) -> u64 {
        let ready: u64 = self
            .ready
            .iter()
            .zip(&self.specs)
            .map(|(files, spec)| spec.size * files.len() as u64)
            .sum();
        ready + self.filling.as_ref().map_or(0, |f| self.specs[f.pool].size)
    }

    /// Files the pools hold, the one being filled included.
    pub fn file_count(&self) -> usize {
        self.ready.iter().map(Vec::len).sum::<usize>() + usize::from(self.filling.is_some())
    }

    fn pool_of(&self, size: u64, kind: MemoryKind) -> Option<usize> {
        self.specs
            .iter()
            .zip(&self.ready)
            .position(|(spec, files)| spec.matches(size, kind) && !files.is_empty())
    }

    /// Takes a ready file of `size` and `kind`, if a pool has one.
    pub fn take(&mut self, size: u64, kind: MemoryKind) -> Option<PoolFile> {
        let pool = self.pool_of(size, kind)?;
        self.ready[pool].pop()
    }

    /// Returns a file [`Pool::take`] gave out that was not used.
    pub fn put_back(&mut self, size: u64, kind: MemoryKind, file: PoolFile) {
        if let Some(pool) = self.specs.iter().position(|s| s.matches(size, kind)) {
            self.ready[pool].push(file);
        }
    }

    /// Lets go of one ready file (the largest) to make room for a CREATE.
    pub fn release_one(&mut self) -> Option<PoolFile> {
        let pool = (0..self.specs.len())
            .filter(|&p| !self.ready[p].is_empty())
            .max_by_key(|&p| self.specs[p].size)?;
        self.ready[pool].pop()
    }

    /// A file kept from before a restart: `Err` gives it back when no
    /// configured pool wants it (another size or kind, or full).
    pub fn restore(
        &mut self,
        fid: u64,
        fd: OwnedFd,
        size: u64,
        kind: MemoryKind,
    ) -> Result<(), OwnedFd> {
        let wanting = self
            .specs
            .iter()
            .zip(&self.ready)
            .position(|(spec, files)| {
                spec.matches(size, kind) && files.len() < spec.count as usize
            });
        match wanting {
            Some(pool) => {
                self.ready[pool].push(PoolFile { fid, fd });
                Ok(())
            }
            None => Err(fd),
        }
    }

    /// Files the filler finished since the last call.
    pub fn finished(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        let Some(filler) = &self.filler else {
            return out;
        };
        loop {
            match filler.filled.try_recv() {
                Ok(filled) => {
                    self.filling = None;
                    let spec = self.specs[filled.pool];
                    match filled.file {
                        Ok(fd) => out.push(Finished {
                            pool: filled.pool,
                            fd,
                        }),
                        Err(e) => {
                            warn!(
                                "pool {spec}: could not make a file ({e}); trying again in {} s",
                                RETRY_AFTER.as_secs()
                            );
                            self.retry_at = Some(Instant::now() + RETRY_AFTER);
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    warn!("the pool filler thread is gone; pools are not refilled");
                    self.filling = None;
                    self.filler = None;
                    break;
                }
            }
        }
        out
    }

    /// Adds a finished file, adopted as `fid`.
    pub fn add_ready(&mut self, pool: usize, fid: u64, fd: OwnedFd) {
        self.ready[pool].push(PoolFile { fid, fd });
    }

    /// Orders the next file if a pool is short and `room` bytes (under
    /// `--max-memory`) and a file (under `--max-files`) are free. One file
    /// at a time.
    pub fn refill(&mut self, room: u64, file_room: bool) {
        if self.filling.is_some() || !file_room {
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(pool) = self
            .specs
            .iter()
            .zip(&self.ready)
            .position(|(spec, files)| files.len() < spec.count as usize && spec.size <= room)
        else {
            return;
        };
        let spec = self.specs[pool];
        if self.filler.is_none() {
            let (orders, orders_rx) = mpsc::channel();
            let (filled_tx, filled) = mpsc::channel();
            if let Err(e) = filler::spawn(orders_rx, filled_tx) {
                warn!(
                    "starting the pool filler: {e}; trying again in {} s",
                    RETRY_AFTER.as_secs()
                );
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                return;
            }
            self.filler = Some(Filler { orders, filled });
        }
        let progress = Arc::new(AtomicU64::new(0));
        let order = filler::Order {
            pool,
            size: spec.size,
            kind: spec.kind,
            numa_node: self.numa_node,
            progress: Arc::clone(&progress),
        };
        if self
            .filler
            .as_ref()
            .is_some_and(|f| f.orders.send(order).is_ok())
        {
            self.filling = Some(Filling { pool, progress });
        } else {
            self.filler = None;
        }
    }

    /// Every ready file, with its pool's spec.
    pub fn files(&self) -> impl Iterator<Item = (&PoolFile, &PoolSpec)> {
        self.ready
            .iter()
            .zip(&self.specs)
            .flat_map(|(files, spec)| files.iter().map(move |f| (f, spec)))
    }

    /// The pools as STATUS section 4 shows them.
    pub fn status(&self) -> Vec<FillStatus> {
        self.specs
            .iter()
            .zip(&self.ready)
            .enumerate()
            .map(|(i, (spec, files))| {
                let filling = self.filling.as_ref().filter(|f| f.pool == i);
                FillStatus {
                    size: spec.size,
                    kind: spec.kind,
                    populated: filling.map_or(0, |f| f.progress.load(Ordering::Acquire)),
                    state: FillState::Pool,
                    subject: FillSubject::Pool {
                        ready: u32::try_from(files.len()).unwrap_or(u32::MAX),
                        count: spec.count,
                        filling: u32::from(filling.is_some()),
                    },
                }
            })
            .collect()
    }

    /// A line for the log and the fd keeper.
    pub fn summary(&self) -> Option<String> {
        if self.specs.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .specs
            .iter()
            .zip(&self.ready)
            .map(|(spec, files)| format!("{}/{} of {}", files.len(), spec.count, spec))
            .collect();
        Some(format!("pools {}", parts.join(", ")))
    }
}
