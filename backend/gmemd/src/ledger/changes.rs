//! What changed in the ledger since it was last asked: the entities a
//! journal must write again (their new state, or that they are gone).
//! Marked by every mutating method; the ledger itself never reads it.

use std::collections::BTreeSet;

use gmem_protocol::wire::{LeaseId, Uuid};

use super::{FileKey, Ledger};

/// An entity that changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// A file (added, removed, or its holders).
    File(FileKey),
    /// A VM (tied, untied, its lease or idle time).
    Vm(Uuid),
    /// A lease (opened, closed, its bindings).
    Lease(LeaseId),
    /// The retired list.
    Retired,
}

impl Ledger {
    /// The entities changed since the last call.
    pub fn take_changes(&mut self) -> BTreeSet<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Marks an entity changed by something outside the ledger (a lease
    /// handed to another process).
    pub fn touch(&mut self, change: Change) {
        self.changes.insert(change);
    }
}
