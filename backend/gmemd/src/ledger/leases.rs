//! Leases: one per VM connection, at most one open per VM.

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, Name, VmId, VmSelector};

use super::{Binding, Ledger, LedgerError, LedgerResult};

/// Who is on the other end of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// Process id (SO_PEERCRED); 0 for a process in a pid namespace gmemd
    /// cannot see into.
    pub pid: u32,
    /// User id.
    pub uid: u32,
}

/// A lease's ledger record.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    /// The VM.
    pub vm: VmId,
    /// The client process.
    pub peer: Peer,
    pub(super) bindings: BTreeMap<u32, Binding>,
}

impl LeaseRecord {
    /// Bindings by slot.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }
}

/// What ending a lease removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEnd {
    /// The VM whose lease ended.
    pub vm: VmId,
    /// Bindings dropped.
    pub bindings: Vec<Binding>,
    /// Files whose owner was cleared.
    pub released: Vec<Name>,
}

impl Ledger {
    /// Opens a lease for `vm`. A VM has at most one lease at a time.
    ///
    /// # Errors
    /// [`LedgerError::VmBusy`], [`LedgerError::LeaseExists`].
    pub fn open_lease(&mut self, id: LeaseId, vm: VmId, peer: Peer) -> LedgerResult<()> {
        if self.leases.contains_key(&id) {
            return Err(LedgerError::LeaseExists(id));
        }
        if let Some((lease, rec)) = self.leases.iter().find(|(_, l)| l.vm.uuid == vm.uuid) {
            return Err(LedgerError::VmBusy {
                vm: rec.vm.clone(),
                lease: *lease,
                pid: rec.peer.pid,
            });
        }
        self.leases.insert(
            id,
            LeaseRecord {
                vm,
                peer,
                bindings: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Ends a lease: drops every binding at once and clears the owners that
    /// had no other binding.
    ///
    /// # Errors
    /// [`LedgerError::UnknownLease`].
    pub fn close_lease(&mut self, id: LeaseId) -> LedgerResult<LeaseEnd> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(LedgerError::UnknownLease(id))?;
        let mut released = Vec::new();
        for binding in lease.bindings.values() {
            if let Some(file) = self.files.get_mut(&binding.file) {
                file.ranges.remove(&binding.offset);
                if file.ranges.is_empty() && file.owner.take().is_some() {
                    released.push(binding.file.clone());
                }
            }
        }
        released.sort();
        released.dedup();
        Ok(LeaseEnd {
            vm: lease.vm,
            bindings: lease.bindings.into_values().collect(),
            released,
        })
    }

    /// The open lease of a VM. Names are not unique (UUIDs are), so a name
    /// matching several leases is refused rather than guessed.
    ///
    /// # Errors
    /// [`LedgerError::UnknownVm`], [`LedgerError::AmbiguousVm`].
    pub fn lease_of(&self, selector: &VmSelector) -> LedgerResult<LeaseId> {
        let matching: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| match selector {
                VmSelector::Uuid(u) => l.vm.uuid == *u,
                VmSelector::Name(n) => l.vm.name == *n,
            })
            .map(|(id, _)| *id)
            .collect();
        match (matching.as_slice(), selector) {
            ([id], _) => Ok(*id),
            ([], _) => Err(LedgerError::UnknownVm(selector.to_string())),
            (many, VmSelector::Name(name)) => Err(LedgerError::AmbiguousVm {
                name: name.clone(),
                count: many.len(),
            }),
            // One lease per UUID is enforced by open_lease.
            (_, VmSelector::Uuid(_)) => Err(LedgerError::UnknownVm(selector.to_string())),
        }
    }

    /// A lease's record.
    ///
    /// # Errors
    /// [`LedgerError::UnknownLease`].
    pub fn lease(&self, id: LeaseId) -> LedgerResult<&LeaseRecord> {
        self.leases.get(&id).ok_or(LedgerError::UnknownLease(id))
    }

    /// All leases, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &LeaseRecord)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }
}
