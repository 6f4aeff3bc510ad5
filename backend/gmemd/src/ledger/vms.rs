//! VMs gmemd knows: each tied to the principal of its first lease, one name
//! per UUID and one UUID per name (DESIGN invariant 6). A VM is known from
//! its first lease until it has neither files nor a lease, or an operator
//! forgets it.

use gmem_protocol::wire::{LeaseId, Uuid, VmId, VmSelector};

use super::{Change, FileKey, FileSpec, Ledger, LedgerError, LedgerResult, Space};
use crate::principal::Tie;

/// A VM gmemd knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEntry {
    /// Its identity.
    pub vm: VmId,
    /// The principal it is tied to.
    pub tie: Tie,
    /// Its open lease.
    pub lease: Option<LeaseId>,
    /// Files in its namespace.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// When its last lease ended (the caller's clock, in seconds); `None`
    /// while it has one.
    pub idle_since: Option<u64>,
}

impl Ledger {
    /// A VM gmemd knows.
    pub fn vm(&self, uuid: Uuid) -> Option<&VmEntry> {
        self.vms.get(&uuid)
    }

    /// Every VM gmemd knows, by UUID.
    pub fn vms(&self) -> impl Iterator<Item = &VmEntry> {
        self.vms.values()
    }

    /// The UUID of a known VM named by UUID or name.
    ///
    /// # Errors
    /// [`LedgerError::UnknownVmId`].
    pub fn find_vm(&self, selector: &VmSelector) -> LedgerResult<Uuid> {
        let uuid = match selector {
            VmSelector::Uuid(u) => self.vms.contains_key(u).then_some(*u),
            VmSelector::Name(n) => self.names.get(n).copied(),
        };
        uuid.ok_or_else(|| LedgerError::UnknownVmId(selector.to_string()))
    }

    /// Files and bytes charged to `tie`: its VMs' files, and retired
    /// memory that holders may still reach.
    pub fn usage_of(&self, tie: &Tie) -> (usize, u64) {
        let (files, bytes) = self
            .vms
            .values()
            .filter(|vm| vm.tie == *tie)
            .fold((0, 0), |(files, bytes), vm| {
                (files + vm.files, bytes + vm.bytes)
            });
        let retired: u64 = self
            .retired
            .iter()
            .filter(|r| r.tie.as_ref() == Some(tie))
            .map(|r| r.bytes)
            .sum();
        (files, bytes + retired)
    }

    /// Forgets a VM that has no lease: destroys its files (returned, with
    /// their keys, so the caller closes them) and unties it, so any
    /// principal may use its UUID and name again.
    ///
    /// # Errors
    /// [`LedgerError::UnknownVmId`], [`LedgerError::VmLeased`].
    pub fn forget(
        &mut self,
        selector: &VmSelector,
    ) -> LedgerResult<(VmEntry, Vec<(FileKey, FileSpec)>)> {
        let uuid = self.find_vm(selector)?;
        let vm = self.vms[&uuid].clone();
        if let Some(lease) = vm.lease {
            return Err(LedgerError::VmLeased { vm: vm.vm, lease });
        }
        let files: Vec<(FileKey, FileSpec)> = self
            .files_in(Space::Vm(uuid))
            .map(|(key, file)| (key.clone(), file.spec))
            .collect();
        for (key, _) in &files {
            // Unleased, so unbound: removal cannot be refused.
            self.remove_file(key, true)?;
        }
        // The last removal untied it already, unless it had no files.
        if let Some(vm) = self.vms.remove(&uuid) {
            self.names.remove(&vm.vm.name);
        }
        self.touch(Change::Vm(uuid));
        Ok((vm, files))
    }

    /// Forgets a VM once it has neither files nor a lease: nothing of it is
    /// left to protect, and its name is free again.
    pub(super) fn untie_if_unused(&mut self, uuid: Uuid) {
        if let Some(vm) = self.vms.get(&uuid) {
            if vm.files == 0 && vm.lease.is_none() {
                let name = vm.vm.name.clone();
                self.vms.remove(&uuid);
                self.names.remove(&name);
                self.touch(Change::Vm(uuid));
            }
        }
    }
}
