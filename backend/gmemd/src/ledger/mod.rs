//! The ownership ledger: memory files, leases, bindings and owners.
//!
//! Pure data and invariants; no fds, sockets, clock or unsafe. Every change
//! is checked completely before anything is modified, so a refused request
//! leaves the ledger exactly as it was (DESIGN invariant 3). The daemon is
//! single-threaded, so the ledger needs no lock of its own: one request is
//! applied at a time, which is the per-file serialization the design asks for.
//!
//! Invariants kept here (numbers from DESIGN.md):
//! 1. a file has at most one owner VM, set by its first binding, cleared with
//!    its last ([`bindings`](Ledger::bind));
//! 2. bindings are page-aligned, inside the file, do not overlap another
//!    binding of the file, use a slot free in their VM and a guest-physical
//!    range free in their VM; a guest_memfd is bound only by the VM that
//!    deposited it;
//! 4. ending a lease drops all its bindings at once ([`Ledger::close_lease`]);
//! 6. a file is not given to a VM while a live process that received it for
//!    another VM could still reach it ([`Ledger::check_access`]).
//!
//! By concept: `error` (refusals and their errnos), `files` (memory files
//! and who made them), `leases`, `bindings` (bind and unbind), `holders`.

mod bindings;
mod error;
mod files;
mod holders;
mod leases;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, Name};

pub use bindings::Binding;
pub use error::{LedgerError, LedgerResult};
pub use files::{FileRecord, FileSpec, Owner};
pub use leases::{LeaseEnd, LeaseRecord, Peer};

/// The ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    files: BTreeMap<Name, FileRecord>,
    leases: BTreeMap<LeaseId, LeaseRecord>,
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
            for (slot, b) in &lease.bindings {
                assert_eq!(*slot, b.slot);
                let file = &self.files[&b.file];
                assert_eq!(file.ranges.get(&b.offset), Some(&(*id, b.slot, b.size)));
                let owner = file.owner.as_ref().expect("bound file has an owner");
                assert_eq!(owner.vm.uuid, lease.vm.uuid);
                assert_eq!(b.offset % file.spec.page_size, 0);
                assert!(b.offset + b.size <= file.spec.size);
                if let (gmem_protocol::wire::MemoryKind::GuestMemfd, Some(depositor)) =
                    (file.spec.kind, &file.creator)
                {
                    assert_eq!(depositor.uuid, lease.vm.uuid, "guest_memfd of another VM");
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
        for file in self.files.values() {
            assert_eq!(file.owner.is_some(), !file.ranges.is_empty());
            let mut last_end = 0;
            for (start, (_, _, size)) in &file.ranges {
                assert!(*start >= last_end, "overlapping file ranges");
                last_end = start + size;
            }
            ranges += file.ranges.len();
        }
        assert_eq!(seen, ranges);
    }
}
