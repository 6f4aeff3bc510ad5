//! Leases: one per VM connection, at most one open per VM, each from the
//! principal the VM is tied to.

use std::collections::BTreeMap;

use gmem_protocol::wire::{LeaseId, Name, VmId, VmSelector};

use super::{Binding, Change, FileKey, Ledger, LedgerError, LedgerResult, VmEntry};
use crate::principal::{Principal, TieRules};

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
    /// Files (in the VM's namespace) whose owner was cleared.
    pub released: Vec<Name>,
}

impl Ledger {
    /// Opens a lease for `vm` from `principal`. A VM is tied to the
    /// principal of its first lease (by `rules`); later leases must come
    /// from that principal, unless `operator`. One name is one UUID, and a
    /// VM has at most one lease at a time.
    ///
    /// # Errors
    /// [`LedgerError::LeaseExists`], [`LedgerError::NameTaken`],
    /// [`LedgerError::Renamed`], [`LedgerError::OtherPrincipal`],
    /// [`LedgerError::Tie`], [`LedgerError::VmBusy`].
    pub fn open_lease(
        &mut self,
        id: LeaseId,
        vm: VmId,
        peer: Peer,
        principal: &Principal,
        rules: &TieRules,
        operator: bool,
    ) -> LedgerResult<()> {
        if self.leases.contains_key(&id) {
            return Err(LedgerError::LeaseExists(id));
        }
        // Whose a name or UUID is, is checked before what it is: another
        // principal learns nothing of a VM, not even its UUID.
        let by_name = self.names.get(&vm.name).and_then(|uuid| self.vms.get(uuid));
        for known in by_name.into_iter().chain(self.vms.get(&vm.uuid)) {
            if !operator && !known.tie.admits(principal) {
                return Err(LedgerError::OtherPrincipal {
                    vm: if known.vm.uuid == vm.uuid {
                        vm.uuid.to_string()
                    } else {
                        vm.name.to_string()
                    },
                });
            }
        }
        if let Some(known) = by_name {
            if known.vm.uuid != vm.uuid {
                return Err(LedgerError::NameTaken {
                    name: vm.name.clone(),
                    uuid: known.vm.uuid,
                });
            }
        }
        let tie = match self.vms.get(&vm.uuid) {
            Some(known) => {
                if known.vm.name != vm.name {
                    return Err(LedgerError::Renamed {
                        uuid: vm.uuid,
                        name: known.vm.name.clone(),
                    });
                }
                if let Some(lease) = known.lease {
                    let pid = self.leases.get(&lease).map_or(0, |l| l.peer.pid);
                    return Err(LedgerError::VmBusy {
                        vm: known.vm.clone(),
                        lease,
                        pid,
                    });
                }
                None
            }
            None => Some(rules.tie_for(&vm, principal)?),
        };
        match tie {
            Some(tie) => {
                self.names.insert(vm.name.clone(), vm.uuid);
                self.vms.insert(
                    vm.uuid,
                    VmEntry {
                        vm: vm.clone(),
                        tie,
                        lease: Some(id),
                        files: 0,
                        bytes: 0,
                        idle_since: None,
                    },
                );
            }
            None => {
                let known = self.vms.get_mut(&vm.uuid).expect("checked above");
                known.lease = Some(id);
                known.idle_since = None;
            }
        }
        self.touch(Change::Vm(vm.uuid));
        self.touch(Change::Lease(id));
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

    /// Ends a lease at time `now` (the caller's clock, in seconds): drops
    /// every binding at once and clears the owners that had no other
    /// binding. A VM left with no files is forgotten.
    ///
    /// # Errors
    /// [`LedgerError::UnknownLease`].
    pub fn close_lease(&mut self, id: LeaseId, now: u64) -> LedgerResult<LeaseEnd> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(LedgerError::UnknownLease(id))?;
        let mut released = Vec::new();
        for binding in lease.bindings.values() {
            let key = FileKey::vm(lease.vm.uuid, binding.file.clone());
            if let Some(file) = self.files.get_mut(&key) {
                file.ranges.remove(&binding.offset);
                if file.ranges.is_empty() && file.owner.take().is_some() {
                    released.push(binding.file.clone());
                }
            }
        }
        released.sort();
        released.dedup();
        if let Some(vm) = self.vms.get_mut(&lease.vm.uuid) {
            vm.lease = None;
            vm.idle_since = Some(now);
        }
        self.touch(Change::Vm(lease.vm.uuid));
        self.touch(Change::Lease(id));
        self.untie_if_unused(lease.vm.uuid);
        Ok(LeaseEnd {
            vm: lease.vm,
            bindings: lease.bindings.into_values().collect(),
            released,
        })
    }

    /// The open lease of a VM named by UUID or name.
    ///
    /// # Errors
    /// [`LedgerError::UnknownVm`].
    pub fn lease_of(&self, selector: &VmSelector) -> LedgerResult<LeaseId> {
        self.find_vm(selector)
            .ok()
            .and_then(|uuid| self.vms[&uuid].lease)
            .ok_or_else(|| LedgerError::UnknownVm(selector.to_string()))
    }

    /// A lease's record.
    ///
    /// # Errors
    /// [`LedgerError::UnknownLease`].
    pub fn lease(&self, id: LeaseId) -> LedgerResult<&LeaseRecord> {
        self.leases.get(&id).ok_or(LedgerError::UnknownLease(id))
    }

    /// A binding of a lease.
    pub fn binding(&self, id: LeaseId, slot: u32) -> Option<&Binding> {
        self.leases.get(&id)?.bindings.get(&slot)
    }

    /// Number of open leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// All leases, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &LeaseRecord)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }
}
