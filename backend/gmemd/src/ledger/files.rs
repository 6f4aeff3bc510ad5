//! Memory files: their size and kind, their namespace, their owner.

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, MemoryKind, Name, VmId};

use super::{Binding, Change, FileKey, Ledger, LedgerError, LedgerResult, Space};

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

/// The VM that binds a file now (always the VM of its namespace).
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
    /// Processes that received the fd, with the lease it came through
    /// (accounting: see `holders`).
    pub(super) holders: BTreeMap<u32, Option<LeaseId>>,
    /// A deposited guest_memfd: the lease whose VMM's VM it belongs to.
    pub(super) depositor: Option<LeaseId>,
}

impl FileRecord {
    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.ranges.len()
    }

    /// Its bindings as (lease, slot), by file offset.
    pub fn bindings(&self) -> impl Iterator<Item = (LeaseId, u32)> + '_ {
        self.ranges.values().map(|&(lease, slot, _)| (lease, slot))
    }

    /// For a deposited guest_memfd, the lease that deposited it.
    pub fn depositor(&self) -> Option<LeaseId> {
        self.depositor
    }

    /// Pids recorded as having received the fd, with the lease it came
    /// through.
    pub fn holders(&self) -> impl Iterator<Item = (u32, Option<LeaseId>)> + '_ {
        self.holders.iter().map(|(&pid, &lease)| (pid, lease))
    }
}

impl Ledger {
    /// Adds a memory file under `key`. A VM's file needs the VM known (it
    /// has had a lease); `depositor` marks a guest_memfd deposited by that
    /// lease.
    ///
    /// # Errors
    /// [`LedgerError::FileExists`], [`LedgerError::UnknownVmId`].
    pub fn add_file(
        &mut self,
        key: FileKey,
        spec: FileSpec,
        depositor: Option<LeaseId>,
    ) -> LedgerResult<()> {
        if self.files.contains_key(&key) {
            return Err(LedgerError::FileExists {
                file: self.label(&key),
            });
        }
        if let Space::Vm(uuid) = key.space {
            let vm = self
                .vms
                .get_mut(&uuid)
                .ok_or_else(|| LedgerError::UnknownVmId(uuid.to_string()))?;
            vm.files += 1;
            vm.bytes += spec.size;
        }
        self.total_bytes += spec.size;
        self.touch(Change::File(key.clone()));
        self.files.insert(
            key,
            FileRecord {
                spec,
                owner: None,
                ranges: BTreeMap::new(),
                holders: BTreeMap::new(),
                depositor,
            },
        );
        Ok(())
    }

    /// Checks that a file may be removed by a requester who is (or is not) an
    /// operator: unbound files by anyone, bound files by an operator only.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`], [`LedgerError::FileBound`].
    pub fn check_remove(&self, key: &FileKey, operator: bool) -> LedgerResult<&FileRecord> {
        let file = self.file(key)?;
        if let (Some(owner), false) = (&file.owner, operator) {
            return Err(LedgerError::FileBound {
                file: self.label(key),
                bindings: file.ranges.len(),
                owner: owner.vm.clone(),
            });
        }
        Ok(file)
    }

    /// Removes a file, dropping its bindings (operator destroy). Returns
    /// them and the removed record. Its holders may still reach the inode,
    /// so it stays charged as retired memory; a VM left with no file and no
    /// lease is untied.
    ///
    /// # Errors
    /// As [`Ledger::check_remove`].
    pub fn remove_file(
        &mut self,
        key: &FileKey,
        operator: bool,
    ) -> LedgerResult<(Vec<Binding>, FileRecord)> {
        self.check_remove(key, operator)?;
        let file = self
            .files
            .remove(key)
            .ok_or_else(|| LedgerError::UnknownFile {
                file: self.label(key),
            })?;
        self.total_bytes -= file.spec.size;
        let mut dropped = Vec::new();
        for (offset, (lease, slot, _)) in &file.ranges {
            if let Some(rec) = self.leases.get_mut(lease) {
                if let Some(b) = rec.bindings.remove(slot) {
                    debug_assert_eq!(b.offset, *offset);
                    dropped.push(b);
                }
            }
            self.changes.insert(Change::Lease(*lease));
        }
        self.touch(Change::File(key.clone()));
        // Retired before the VM may be untied: its tie pays.
        self.retire(key, &file);
        if let Space::Vm(uuid) = key.space {
            if let Some(vm) = self.vms.get_mut(&uuid) {
                vm.files -= 1;
                vm.bytes -= file.spec.size;
            }
            self.untie_if_unused(uuid);
        }
        Ok((dropped, file))
    }

    /// Checks that an unbound file may move to `to`; returns its spec.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`], [`LedgerError::FileBound`] (even for
    /// operators: the binding VMM maps the old inode),
    /// [`LedgerError::FileExists`], [`LedgerError::UnknownVmId`],
    /// [`LedgerError::GuestMemfdStays`].
    pub fn check_move(&self, from: &FileKey, to: &FileKey) -> LedgerResult<FileSpec> {
        let file = self.check_remove(from, false)?;
        if file.spec.kind == MemoryKind::GuestMemfd {
            return Err(LedgerError::GuestMemfdStays {
                file: self.label(from),
            });
        }
        if self.files.contains_key(to) {
            return Err(LedgerError::FileExists {
                file: self.label(to),
            });
        }
        if let Space::Vm(uuid) = to.space {
            if !self.vms.contains_key(&uuid) {
                return Err(LedgerError::UnknownVmId(uuid.to_string()));
            }
        }
        Ok(file.spec)
    }

    /// Moves an unbound file to another namespace and name. The record
    /// arrives with no holders: the caller gives it a fresh inode, and the
    /// old one is retired with the holders it had.
    ///
    /// # Errors
    /// As [`Ledger::check_move`]; the ledger is unchanged then.
    pub fn move_file(&mut self, from: &FileKey, to: FileKey) -> LedgerResult<FileSpec> {
        let spec = self.check_move(from, &to)?;
        // Added first, so a VM whose last file moves within its own
        // namespace is never untied on the way.
        self.add_file(to, spec, None)?;
        self.remove_file(from, false)?;
        Ok(spec)
    }

    /// A file's record.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn file(&self, key: &FileKey) -> LedgerResult<&FileRecord> {
        self.files.get(key).ok_or_else(|| LedgerError::UnknownFile {
            file: self.label(key),
        })
    }

    /// All files, by namespace then name.
    pub fn files(&self) -> impl Iterator<Item = (&FileKey, &FileRecord)> {
        self.files.iter()
    }

    /// The files of one namespace, by name: a range of the map, so a
    /// page of one VM's files costs no walk over everyone's.
    pub fn files_in(&self, space: Space) -> impl Iterator<Item = (&FileKey, &FileRecord)> {
        // "-" is the smallest name there is: every name is at least as
        // large (names are [A-Za-z0-9._:-]+, '-' the lowest byte).
        let first = Name::new("-").expect("a valid name");
        self.files
            .range(FileKey { space, name: first }..)
            .take_while(move |(k, _)| k.space == space)
    }

    /// Bytes of all memory files.
    pub fn total_size(&self) -> u64 {
        self.total_bytes
    }

    /// Number of memory files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// How users name a file: `vm/name`, or the bare name of an operators'
    /// file (`uuid/name` for a VM gmemd does not know).
    pub fn label(&self, key: &FileKey) -> String {
        match key.space {
            Space::Operators => key.name.to_string(),
            Space::Vm(uuid) => match self.vms.get(&uuid) {
                Some(vm) => format!("{}/{}", vm.vm.name, key.name),
                None => format!("{uuid}/{}", key.name),
            },
        }
    }
}
