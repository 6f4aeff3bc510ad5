//! Memory files: their size and kind, the VM that made them, their owner.

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, MemoryKind, Name, Uuid, VmId};

use super::{Binding, Ledger, LedgerError, LedgerResult};

/// The static description of a memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// Size in bytes.
    pub size: u64,
    /// Backing kind.
    pub kind: MemoryKind,
    /// Binding alignment.
    pub page_size: u64,
}

/// The VM that owns a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The VM.
    pub vm: VmId,
    /// The lease it binds through.
    pub lease: LeaseId,
}

/// A memory file's ledger record.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// Size, kind and page size.
    pub spec: FileSpec,
    /// Current owner.
    pub owner: Option<Owner>,
    /// Bindings keyed by file offset: (lease, slot, size).
    pub(super) ranges: BTreeMap<u64, (LeaseId, u32, u64)>,
    /// Processes that received the fd, one record per (pid, VM it was
    /// received for), with the lease it came through (see `holders`).
    pub(super) holders: BTreeMap<(u32, Uuid), Option<LeaseId>>,
    /// The VM that created or deposited it, across all its leases; `None`
    /// for an operator's file.
    pub(super) creator: Option<VmId>,
}

impl FileRecord {
    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.ranges.len()
    }

    /// The VM that created or deposited the file (`None`: an operator).
    pub fn creator(&self) -> Option<&VmId> {
        self.creator.as_ref()
    }

    /// Pids recorded as having received the fd, with the VM they got it for
    /// and the lease it came through.
    pub fn holders(&self) -> impl Iterator<Item = (u32, Uuid, Option<LeaseId>)> + '_ {
        self.holders
            .iter()
            .map(|(&(pid, vm), &lease)| (pid, vm, lease))
    }
}

impl Ledger {
    /// Adds a memory file made by `creator` (`None`: an operator).
    ///
    /// # Errors
    /// [`LedgerError::FileExists`].
    pub fn add_file(
        &mut self,
        name: Name,
        spec: FileSpec,
        creator: Option<VmId>,
    ) -> LedgerResult<()> {
        if self.files.contains_key(&name) {
            return Err(LedgerError::FileExists { name });
        }
        self.files.insert(
            name,
            FileRecord {
                spec,
                owner: None,
                ranges: BTreeMap::new(),
                holders: BTreeMap::new(),
                creator,
            },
        );
        Ok(())
    }

    /// Checks that a file may be removed by a requester who is (or is not) an
    /// operator: unbound files by anyone, bound files by an operator only.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`], [`LedgerError::FileBound`].
    pub fn check_remove(&self, name: &Name, operator: bool) -> LedgerResult<&FileRecord> {
        let file = self.file(name)?;
        if let (Some(owner), false) = (&file.owner, operator) {
            return Err(LedgerError::FileBound {
                name: name.clone(),
                bindings: file.ranges.len(),
                owner: owner.vm.clone(),
            });
        }
        Ok(file)
    }

    /// Removes a file, dropping its bindings (operator destroy).
    ///
    /// # Errors
    /// As [`Ledger::check_remove`].
    pub fn remove_file(&mut self, name: &Name, operator: bool) -> LedgerResult<Vec<Binding>> {
        self.check_remove(name, operator)?;
        let file = self
            .files
            .remove(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        let mut dropped = Vec::new();
        for (offset, (lease, slot, _)) in file.ranges {
            if let Some(rec) = self.leases.get_mut(&lease) {
                if let Some(b) = rec.bindings.remove(&slot) {
                    debug_assert_eq!(b.offset, offset);
                    dropped.push(b);
                }
            }
        }
        Ok(dropped)
    }

    /// A file's record.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn file(&self, name: &Name) -> LedgerResult<&FileRecord> {
        self.files
            .get(name)
            .ok_or_else(|| LedgerError::UnknownFile { name: name.clone() })
    }

    /// All files, by name.
    pub fn files(&self) -> impl Iterator<Item = (&Name, &FileRecord)> {
        self.files.iter()
    }

    /// Bytes of all memory files.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.spec.size).sum()
    }

    /// Files that VM `uuid` created or deposited and that still exist.
    pub fn files_created_by(&self, uuid: Uuid) -> usize {
        self.files
            .values()
            .filter(|f| f.creator.as_ref().is_some_and(|c| c.uuid == uuid))
            .count()
    }
}
