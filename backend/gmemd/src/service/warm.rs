//! Memory made ready ahead of use: files CREATEd with `PREFAULT` (populated
//! by the prefault workers while gmemd goes on serving) and the warm pools
//! (CREATE takes a ready file of its size and kind). STATUS section 4
//! shows both.
//!
//! Pool memory counts against `--max-memory` and `--max-files` like any
//! file: the pools refill only into room the ledger leaves, and a CREATE
//! that finds no room lets go of ready pool files before it is refused.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    encode_status_page_from, Features, FillState, FillStatus, FillSubject, MemoryKind, Name,
    Request, StatusQuery,
};
use log::{debug, info};

use super::persist::file_fd_name;
use super::{Service, ServiceError, ServiceResult, Session};
use crate::journal::record::{PoolRec, Record};
use crate::ledger::FileKey;
use crate::memory::{self, populate::bind_to_node, MemoryResult};
use crate::prefault::Job;
use crate::size::format_size;

/// A file CREATEd with `PREFAULT`.
#[derive(Debug)]
pub(super) struct Prefault {
    /// The id of the inode being populated: a fresh inode (SCRUB) is not.
    fid: u64,
    /// The work; `None` when the file came populated (a pool's, hugetlb).
    job: Option<Arc<Job>>,
}

/// A new file's memory: a pool's ready file (with its id), or fresh.
pub(super) struct NewMemory {
    pub(super) fd: OwnedFd,
    pub(super) pool_fid: Option<u64>,
}

impl Service {
    /// Adopts the files the pool filler finished, orders the next one if
    /// there is room, and forgets prefaults of files that went. Cheap
    /// when there is nothing to do: run before every request and on the
    /// timer.
    pub(crate) fn tend_warm(&mut self) {
        for finished in self.pool.finished() {
            let fid = self.memfiles.reserve_fid();
            self.keep_fd(&file_fd_name(fid), finished.fd.as_fd());
            let (size, kind) = {
                let spec = self.config.warm.pools[finished.pool];
                (spec.size, spec.kind)
            };
            self.journal_record(Record::PoolFile(PoolRec {
                fid,
                size,
                kind: kind.code(),
            }));
            self.pool.add_ready(finished.pool, fid, finished.fd);
            debug!("pool file f{fid} ({} {kind}) ready", format_size(size));
        }
        let limits = &self.config.limits;
        let used = self.memory_in_use();
        let files = self.ledger.file_count() + self.pool.file_count();
        self.pool.refill(
            limits.max_total_memory.saturating_sub(used),
            files < limits.max_files,
        );
        if !self.prefaults.is_empty() {
            let memfiles = &self.memfiles;
            self.prefaults.retain(|key, prefault| {
                let current = memfiles.fid(key) == Some(prefault.fid);
                if !current {
                    if let Some(job) = &prefault.job {
                        job.cancel();
                    }
                }
                current
            });
        }
    }

    /// Bytes counted against `--max-memory`: files, memory still charged
    /// after it left, and the pools.
    pub(super) fn memory_in_use(&self) -> u64 {
        self.ledger.total_size() + self.ledger.retired_bytes() + self.pool.bytes()
    }

    /// Returns a taken pool file whose CREATE failed after all.
    pub(super) fn pool_put_back(&mut self, size: u64, kind: MemoryKind, fid: u64, fd: OwnedFd) {
        self.pool
            .put_back(size, kind, crate::pool::PoolFile { fid, fd });
    }

    /// Lets go of one ready pool file to make room; `false` if none.
    pub(super) fn release_pool_file(&mut self) -> bool {
        let Some(file) = self.pool.release_one() else {
            return false;
        };
        info!(
            "let go of pool file f{} to make room for a new file",
            file.fid
        );
        self.memfiles.forget_fid(file.fid);
        true
    }

    /// Memory for a new file of `size` and `kind`, after `admit` (the
    /// limits, the holder table) said yes: a ready pool file if one
    /// matches (it leaves the pool before `admit` looks, and comes back if
    /// `admit` refuses), else a fresh file.
    pub(super) fn new_memory(
        &mut self,
        name: &Name,
        size: u64,
        kind: MemoryKind,
        admit: impl FnOnce(&mut Self) -> ServiceResult<()>,
    ) -> ServiceResult<NewMemory> {
        if let Some(file) = self.pool.take(size, kind) {
            if let Err(e) = admit(self) {
                self.pool_put_back(size, kind, file.fid, file.fd);
                return Err(e);
            }
            return Ok(NewMemory {
                fd: file.fd,
                pool_fid: Some(file.fid),
            });
        }
        admit(self)?;
        Ok(NewMemory {
            fd: self.fresh_memory(name, size, kind)?,
            pool_fid: None,
        })
    }

    /// A new file, its pages bound to `--numa-node` where that applies.
    fn fresh_memory(&self, name: &Name, size: u64, kind: MemoryKind) -> MemoryResult<OwnedFd> {
        let fd = memory::create(name, size, kind)?;
        if let Some(node) = self
            .config
            .warm
            .numa_node
            .filter(|_| kind == MemoryKind::Memfd)
        {
            bind_to_node(fd.as_fd(), size, node).map_err(memory::syscall("mbind", kind))?;
        }
        Ok(fd)
    }

    /// Starts populating `key`'s file (CREATE with `PREFAULT`), unless
    /// that inode is populated or being populated already.
    pub(super) fn start_prefault(&mut self, key: &FileKey, populated: bool) {
        let Some(fid) = self.memfiles.fid(key) else {
            return;
        };
        if self.prefaults.get(key).is_some_and(|p| p.fid == fid) {
            return;
        }
        let Ok(record) = self.ledger.file(key) else {
            return;
        };
        let spec = record.spec;
        // hugetlb files get their pages when they are made.
        let populated =
            populated || matches!(spec.kind, MemoryKind::Hugetlb2M | MemoryKind::Hugetlb1G);
        let job = if populated {
            None
        } else {
            let fd = self.memfiles.get(key).and_then(|fd| fd.try_clone().ok());
            match fd {
                Some(fd) => Some(self.prefaulter.submit(fd, spec.size)),
                None => {
                    log::warn!(
                        "prefault of {}: gmemd cannot duplicate its fd; pages fault on first \
                         touch",
                        self.ledger.label(key)
                    );
                    return;
                }
            }
        };
        debug!(
            "prefault of {} ({}) {}",
            self.ledger.label(key),
            format_size(spec.size),
            if job.is_some() {
                "started"
            } else {
                "not needed"
            }
        );
        self.prefaults.insert(key.clone(), Prefault { fid, job });
    }

    /// STATUS section 4: the prefaults the session may see, then the pools
    /// (operators only).
    pub(super) fn memory_status(
        &self,
        session: &Session,
        query: StatusQuery,
    ) -> ServiceResult<Response> {
        if !session.features().contains(Features::PREFAULT) {
            return Err(ServiceError::FeatureOff(Request::Status));
        }
        let view = self.view(session);
        let mut entries: Vec<FillStatus> = self
            .prefaults
            .iter()
            .filter(|(key, p)| view.shows(key.vm_uuid()) && self.memfiles.fid(key) == Some(p.fid))
            .filter_map(|(key, p)| {
                let spec = self.ledger.file(key).ok()?.spec;
                let (populated, state) = p
                    .job
                    .as_ref()
                    .map_or((spec.size, FillState::Populated), |job| job.progress());
                Some(FillStatus {
                    size: spec.size,
                    kind: spec.kind,
                    populated,
                    state,
                    subject: FillSubject::File {
                        uuid: key.vm_uuid(),
                        name: key.name.clone(),
                    },
                })
            })
            .collect();
        if session.is_operator() {
            entries.extend(self.pool.status());
        }
        let total = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let start = query.start as usize;
        Ok(Response::ok(
            encode_status_page_from(total, query.start, entries.into_iter().skip(start), |e| {
                e.encode()
            })
            .0,
        ))
    }

    /// Puts the pool files kept before a restart back into their pools;
    /// one no configured pool wants (the pools changed) is let go.
    pub(super) fn restore_pool(
        &mut self,
        kept: &std::collections::BTreeMap<u64, PoolRec>,
        fds: &mut std::collections::HashMap<String, OwnedFd>,
        notes: &mut Vec<String>,
    ) {
        for rec in kept.values() {
            let Some(fd) = fds.remove(&file_fd_name(rec.fid)) else {
                notes.push(format!(
                    "pool file f{}: its fd was not kept; the pool refills",
                    rec.fid
                ));
                continue;
            };
            let Ok(kind) = MemoryKind::try_from(rec.kind) else {
                notes.push(format!(
                    "pool file f{}: unknown kind {}; closed",
                    rec.fid, rec.kind
                ));
                self.memfiles.forget_fid(rec.fid);
                continue;
            };
            if self.pool.restore(rec.fid, fd, rec.size, kind).is_err() {
                info!(
                    "pool file f{} ({} {kind}): no configured pool keeps it now; let go",
                    rec.fid,
                    format_size(rec.size)
                );
                self.memfiles.forget_fid(rec.fid);
            }
        }
    }

    /// The ready pool files, as records (a journal snapshot).
    pub(super) fn pool_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.pool.files().map(|(file, spec)| {
            Record::PoolFile(PoolRec {
                fid: file.fid,
                size: spec.size,
                kind: spec.kind.code(),
            })
        })
    }

    /// The ready pool files' fds, named for a successor.
    pub(super) fn pool_fds(&self) -> impl Iterator<Item = (String, std::os::fd::RawFd)> + '_ {
        self.pool.files().map(|(file, _)| {
            (
                file_fd_name(file.fid),
                std::os::fd::AsRawFd::as_raw_fd(&file.fd),
            )
        })
    }
}
