//! gmemd's own fds of the memory files, each with a stable id (`f<id>` in
//! the fd store and the journal), and the ids that went since the journal
//! last heard.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use crate::ledger::FileKey;

/// The memory fds.
#[derive(Debug, Default)]
pub(super) struct MemFiles {
    by_key: BTreeMap<FileKey, (u64, OwnedFd)>,
    next_fid: u64,
    /// Ids added since the last [`MemFiles::take_events`].
    added: Vec<u64>,
    /// Ids gone since then.
    gone: Vec<u64>,
}

impl MemFiles {
    pub(super) fn with_next_fid(next_fid: u64) -> Self {
        MemFiles {
            next_fid: next_fid.max(1),
            ..MemFiles::default()
        }
    }

    /// Keeps `fd` as `key`'s (a new id; a former fd of the key goes).
    pub(super) fn insert(&mut self, key: FileKey, fd: OwnedFd) -> u64 {
        let fid = self.next_fid;
        self.next_fid += 1;
        self.restore(key, fid, fd);
        self.added.push(fid);
        fid
    }

    /// Keeps `fd` as `key`'s under a known id (recovery).
    pub(super) fn restore(&mut self, key: FileKey, fid: u64, fd: OwnedFd) {
        self.next_fid = self.next_fid.max(fid + 1);
        if let Some((old, _)) = self.by_key.insert(key, (fid, fd)) {
            self.gone.push(old);
        }
    }

    /// A new id for a file not in the ledger yet (a warm-pool file).
    pub(super) fn reserve_fid(&mut self) -> u64 {
        let fid = self.next_fid;
        self.next_fid += 1;
        fid
    }

    /// Records that the file of id `fid`, never in this table (a pool
    /// file), is gone.
    pub(super) fn forget_fid(&mut self, fid: u64) {
        self.gone.push(fid);
    }

    pub(super) fn get(&self, key: &FileKey) -> Option<&OwnedFd> {
        self.by_key.get(key).map(|(_, fd)| fd)
    }

    pub(super) fn fid(&self, key: &FileKey) -> Option<u64> {
        self.by_key.get(key).map(|(fid, _)| *fid)
    }

    /// The fd of id `fid`.
    pub(super) fn by_fid(&self, fid: u64) -> Option<&OwnedFd> {
        self.by_key
            .values()
            .find(|(id, _)| *id == fid)
            .map(|(_, fd)| fd)
    }

    pub(super) fn remove(&mut self, key: &FileKey) -> Option<OwnedFd> {
        let (fid, fd) = self.by_key.remove(key)?;
        self.gone.push(fid);
        Some(fd)
    }

    pub(super) fn next_fid(&self) -> u64 {
        self.next_fid
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every file: key, id, fd.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&FileKey, u64, &OwnedFd)> {
        self.by_key.iter().map(|(k, (fid, fd))| (k, *fid, fd))
    }

    /// Ids added and gone since the last call.
    pub(super) fn take_events(&mut self) -> (Vec<u64>, Vec<u64>) {
        (
            std::mem::take(&mut self.added),
            std::mem::take(&mut self.gone),
        )
    }
}
