//! The ownership ledger: VMs and their principals, memory files in their
//! namespaces, leases, bindings and owners.
//!
//! Pure data and invariants; no fds, sockets, clock or unsafe. Every change
//! is checked completely before anything is modified, so a refused request
//! leaves the ledger exactly as it was (DESIGN invariant 3). The daemon is
//! single-threaded, so the ledger needs no lock of its own: one request is
//! applied at a time, which is the per-file serialization the design asks for.
//!
//! Invariants kept here (numbers from DESIGN.md):
//! 1. a file has at most one owner VM, set by its first binding, cleared with
//!    its last; it is always the VM of the file's namespace;
//! 2. bindings are page-aligned, inside the file, do not overlap another
//!    binding of the file, use a slot free in their VM and a guest-physical
//!    range free in their VM; a guest_memfd is bound only by the lease that
//!    deposited it;
//! 4. ending a lease drops all its bindings at once ([`Ledger::close_lease`]);
//! 6. a VM is tied to the principal of its first lease and its name is its
//!    own; its files live in its namespace, where no other VM can name them.
//!
//! By concept: `error` (refusals and their errnos), `space` (namespaces and
//! file keys), `vms` (VMs and their ties), `files`, `leases`, `bindings`
//! (bind and unbind), `holders` (who received a file, for accounting),
//! `retired` (memory gmemd let go of that holders may still reach).

mod bindings;
mod changes;
mod error;
mod files;
mod holders;
mod leases;
mod restore;
mod retired;
mod space;
#[cfg(test)]
mod tests;
mod vms;

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, MemoryKind, Name, Uuid};

pub use bindings::Binding;
pub use changes::Change;
pub use error::{LedgerError, LedgerResult};
pub use files::{FileRecord, FileSpec, Owner};
pub use leases::{LeaseEnd, LeaseRecord, Peer};
pub use restore::{FilePart, LedgerParts, Restored};
pub use retired::Retired;
pub use space::{FileKey, Space};
pub use vms::VmEntry;

/// The ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    files: BTreeMap<FileKey, FileRecord>,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    vms: BTreeMap<Uuid, VmEntry>,
    names: BTreeMap<Name, Uuid>,
    total_bytes: u64,
    retired: Vec<Retired>,
    retired_bytes: u64,
    changes: std::collections::BTreeSet<Change>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every invariant over the whole ledger; for tests and fuzzing.
    ///
    /// # Panics
    /// If an invariant does not hold.
    pub fn assert_consistent(&self) {
        let mut seen = 0;
        for (id, lease) in &self.leases {
            let vm = &self.vms[&lease.vm.uuid];
            assert_eq!(vm.lease, Some(*id), "a lease's VM knows it");
            assert_eq!(vm.vm, lease.vm);
            for (slot, b) in &lease.bindings {
                assert_eq!(*slot, b.slot);
                let file = &self.files[&FileKey::vm(lease.vm.uuid, b.file.clone())];
                assert_eq!(file.ranges.get(&b.offset), Some(&(*id, b.slot, b.size)));
                let owner = file.owner.as_ref().expect("bound file has an owner");
                assert_eq!(owner.vm.uuid, lease.vm.uuid);
                assert_eq!(b.offset % file.spec.page_size, 0);
                assert!(b.offset + b.size <= file.spec.size);
                if file.spec.kind == MemoryKind::GuestMemfd {
                    assert_eq!(file.depositor, Some(*id), "guest_memfd of another lease");
                }
                for other in lease.bindings.values() {
                    if other.slot != b.slot {
                        assert!(other.gpa.0 >= b.gpa_end() || b.gpa.0 >= other.gpa_end());
                    }
                }
                seen += 1;
            }
        }
        let mut ranges = 0;
        let mut total = 0;
        for (key, file) in &self.files {
            assert_eq!(file.owner.is_some(), !file.ranges.is_empty());
            if let Some(owner) = &file.owner {
                assert_eq!(
                    Space::Vm(owner.vm.uuid),
                    key.space,
                    "owner outside its namespace"
                );
            }
            let mut last_end = 0;
            for (start, (_, _, size)) in &file.ranges {
                assert!(*start >= last_end, "overlapping file ranges");
                last_end = start + size;
            }
            ranges += file.ranges.len();
            total += file.spec.size;
            if let Space::Vm(uuid) = key.space {
                assert!(self.vms.contains_key(&uuid), "file of an unknown VM");
            }
        }
        assert_eq!(seen, ranges);
        assert_eq!(total, self.total_bytes);
        for (uuid, vm) in &self.vms {
            assert_eq!(vm.vm.uuid, *uuid);
            assert_eq!(self.names.get(&vm.vm.name), Some(uuid), "name index");
            let files: Vec<_> = self.files_in(Space::Vm(*uuid)).collect();
            assert_eq!(vm.files, files.len(), "file count of {}", vm.vm);
            assert_eq!(
                vm.bytes,
                files.iter().map(|(_, f)| f.spec.size).sum::<u64>()
            );
            assert!(
                vm.files > 0 || vm.lease.is_some(),
                "unused VM {} kept",
                vm.vm
            );
            assert_eq!(vm.lease.is_some(), vm.idle_since.is_none());
        }
        assert_eq!(self.names.len(), self.vms.len());
        assert_eq!(
            self.retired_bytes,
            self.retired.iter().map(|r| r.bytes).sum::<u64>()
        );
        assert!(self.retired.iter().all(|r| !r.holders.is_empty()));
    }
}
