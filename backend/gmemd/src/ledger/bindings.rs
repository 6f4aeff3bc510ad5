//! Bindings: a VM's memslots backed by ranges of its own files, validated
//! like `kvm_gmem_bind`, and the owner they set and clear (invariants 1 and
//! 2). A VM binds only files of its namespace, so a file's owner is always
//! that VM.

use gmem_protocol::wire::{
    BindRequest, GuestAddress, LeaseId, MemoryKind, Name, MAX_BINDINGS_PER_FILE,
};

use super::{Change, FileKey, Ledger, LedgerError, LedgerResult, Owner};

/// One binding as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Memslot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: GuestAddress,
    /// File.
    pub file: Name,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

impl Binding {
    /// The first guest-physical address past the binding.
    pub(super) fn gpa_end(&self) -> u64 {
        // Checked when the binding was admitted.
        self.gpa.0 + self.size
    }
}

impl Ledger {
    /// Binds a file range of lease `id`'s VM into that VM. Validation
    /// follows `kvm_gmem_bind`. Returns whether this bind set the owner.
    ///
    /// # Errors
    /// Any binding refusal; the ledger is unchanged then.
    pub fn bind(&mut self, id: LeaseId, req: &BindRequest) -> LedgerResult<bool> {
        let lease = self.lease(id)?;
        let vm = &lease.vm;
        // A VM binds files of its own namespace only.
        let key = FileKey::vm(vm.uuid, req.name.clone());
        let file = self.file(&key)?;
        // The kernel binds a guest_memfd to the KVM VM of the VMM that made
        // it; a later lease of the same VM is another KVM VM.
        if file.spec.kind == MemoryKind::GuestMemfd && file.depositor != Some(id) {
            return Err(LedgerError::ForeignGuestMemfd {
                file: self.label(&key),
            });
        }

        let page_size = file.spec.page_size;
        for (field, value) in [
            ("offset", req.offset),
            ("size", req.size),
            ("gpa", req.gpa.0),
        ] {
            if value % page_size != 0 {
                return Err(LedgerError::Misaligned {
                    file: self.label(&key),
                    field,
                    value,
                    page_size,
                });
            }
        }
        if req.size == 0 {
            return Err(LedgerError::EmptyBinding);
        }
        let file_end = req
            .offset
            .checked_add(req.size)
            .filter(|end| *end <= file.spec.size)
            .ok_or_else(|| LedgerError::PastEnd {
                file: self.label(&key),
                offset: req.offset,
                size: req.size,
                file_size: file.spec.size,
            })?;
        let gpa_end = req
            .gpa
            .0
            .checked_add(req.size)
            .ok_or(LedgerError::GuestOverflow {
                gpa: req.gpa.0,
                size: req.size,
            })?;
        // The binding starting closest below our end is the only one that
        // can overlap, because bindings of one file never overlap each other.
        // Overlapping this lease's binding in the very slot asked for is
        // that slot being taken (EEXIST, below), which is what a BIND sent
        // again across a gmemd restart must be told (PROTOCOL §14.4).
        if let Some((&start, &(lease_id, slot, size))) = file.ranges.range(..file_end).next_back() {
            if start + size > req.offset && (lease_id, slot) != (id, req.slot) {
                return Err(LedgerError::FileRangeOverlap {
                    file: self.label(&key),
                    offset: req.offset,
                    size: req.size,
                    slot,
                });
            }
        }
        if lease.bindings.contains_key(&req.slot) {
            return Err(LedgerError::SlotTaken { slot: req.slot });
        }
        if file.ranges.len() >= MAX_BINDINGS_PER_FILE {
            return Err(LedgerError::TooManyBindings {
                file: self.label(&key),
                limit: MAX_BINDINGS_PER_FILE,
            });
        }
        if let Some(other) = lease
            .bindings
            .values()
            .find(|b| b.gpa.0 < gpa_end && req.gpa.0 < b.gpa_end())
        {
            return Err(LedgerError::GuestOverlap {
                gpa: req.gpa.0,
                size: req.size,
                slot: other.slot,
            });
        }

        // Every check passed: apply.
        let vm = vm.clone();
        let file = self.files.get_mut(&key).expect("file checked above");
        let sets_owner = file.owner.is_none();
        if sets_owner {
            file.owner = Some(Owner { vm, lease: id });
        }
        file.ranges.insert(req.offset, (id, req.slot, req.size));
        self.changes.insert(Change::Lease(id));
        self.leases
            .get_mut(&id)
            .expect("lease checked above")
            .bindings
            .insert(
                req.slot,
                Binding {
                    slot: req.slot,
                    gpa: req.gpa,
                    file: req.name.clone(),
                    offset: req.offset,
                    size: req.size,
                },
            );
        Ok(sets_owner)
    }

    /// Removes the binding in `slot`. Returns it and whether the file's owner
    /// was cleared (it was the last binding).
    ///
    /// # Errors
    /// [`LedgerError::UnknownSlot`], [`LedgerError::UnknownLease`].
    pub fn unbind(&mut self, id: LeaseId, slot: u32) -> LedgerResult<(Binding, bool)> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(LedgerError::UnknownLease(id))?;
        let binding = lease
            .bindings
            .remove(&slot)
            .ok_or(LedgerError::UnknownSlot { slot })?;
        self.changes.insert(Change::Lease(id));
        let mut cleared = false;
        let key = FileKey::vm(lease.vm.uuid, binding.file.clone());
        if let Some(file) = self.files.get_mut(&key) {
            file.ranges.remove(&binding.offset);
            if file.ranges.is_empty() {
                cleared = file.owner.take().is_some();
            }
        }
        Ok((binding, cleared))
    }
}
