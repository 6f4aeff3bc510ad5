//! Bindings: a VM's memslots backed by file ranges, validated like
//! `kvm_gmem_bind`, and the owner they set and clear (invariants 1 and 2).

use gmem_protocol::wire::{
    BindRequest, GuestAddress, LeaseId, MemoryKind, Name, MAX_BINDINGS_PER_FILE,
};

use super::{Ledger, LedgerError, LedgerResult, Owner};

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
    /// Binds a file range into lease `id`'s VM. Validation follows
    /// `kvm_gmem_bind`; `is_alive` tells whether a recorded holder process
    /// still exists (invariant 6). Returns whether this bind set the owner.
    ///
    /// # Errors
    /// Any binding refusal; the ledger is unchanged then.
    pub fn bind(
        &mut self,
        id: LeaseId,
        req: &BindRequest,
        is_alive: &mut dyn FnMut(u32) -> bool,
    ) -> LedgerResult<bool> {
        let lease = self.lease(id)?;
        let vm = &lease.vm;
        self.check_access(&req.name, vm.uuid, lease.peer.pid, is_alive)?;
        let file = self.file(&req.name)?;
        if file.spec.kind == MemoryKind::GuestMemfd {
            match &file.creator {
                Some(depositor) if depositor.uuid == vm.uuid => {}
                // Deposits come from leases, so a guest_memfd always has one.
                depositor => {
                    return Err(LedgerError::ForeignGuestMemfd {
                        name: req.name.clone(),
                        depositor: depositor.clone().unwrap_or_else(|| vm.clone()),
                    })
                }
            }
        }

        let page_size = file.spec.page_size;
        for (field, value) in [
            ("offset", req.offset),
            ("size", req.size),
            ("gpa", req.gpa.0),
        ] {
            if value % page_size != 0 {
                return Err(LedgerError::Misaligned {
                    name: req.name.clone(),
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
                name: req.name.clone(),
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
        if let Some((&start, &(_, slot, size))) = file.ranges.range(..file_end).next_back() {
            if start + size > req.offset {
                return Err(LedgerError::FileRangeOverlap {
                    name: req.name.clone(),
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
                name: req.name.clone(),
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
        let file = self.files.get_mut(&req.name).expect("file checked above");
        let sets_owner = file.owner.is_none();
        if sets_owner {
            file.owner = Some(Owner { vm, lease: id });
        }
        file.ranges.insert(req.offset, (id, req.slot, req.size));
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
        let mut cleared = false;
        if let Some(file) = self.files.get_mut(&binding.file) {
            file.ranges.remove(&binding.offset);
            if file.ranges.is_empty() {
                cleared = file.owner.take().is_some();
            }
        }
        Ok((binding, cleared))
    }
}
