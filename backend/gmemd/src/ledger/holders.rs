//! Holders (invariant 6): which processes received a file's fd, for which
//! VM, and whether another VM may have the file while they live.
//!
//! A file keeps one record per (pid, VM): a process that received the file
//! for VM A and then for VM B holds it for both, so neither record moves.
//! Liveness comes from outside (`is_alive`, pidfds in the service): the
//! ledger has no clock and no fds.

use gmem_protocol::wire::{LeaseId, Name, Uuid};

use super::{Ledger, LedgerError, LedgerResult};

impl Ledger {
    /// Records that process `pid` received the file's fd for VM `vm`,
    /// through `lease` if it came over one. Such a holder counts as alive
    /// while its process runs or while that lease is open: whoever keeps
    /// the lease socket (a QEMU the process started and handed the fds to)
    /// may hold the fds too.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn add_holder(
        &mut self,
        name: &Name,
        pid: u32,
        vm: Uuid,
        lease: Option<LeaseId>,
    ) -> LedgerResult<()> {
        let file = self
            .files
            .get_mut(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        let through = file.holders.entry((pid, vm)).or_insert(lease);
        // A later lease of the same VM keeps the process's record current.
        if lease.is_some() {
            *through = lease;
        }
        Ok(())
    }

    fn lease_open(&self, lease: Option<LeaseId>) -> bool {
        lease.is_some_and(|id| self.leases.contains_key(&id))
    }

    /// Forgets every process recorded for the file (after a scrub).
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn clear_holders(&mut self, name: &Name) -> LedgerResult<()> {
        let file = self
            .files
            .get_mut(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        file.holders.clear();
        Ok(())
    }

    /// Forgets the holders `is_alive` reports gone whose lease (if any) is
    /// closed too, in every file.
    pub fn prune_holders(&mut self, is_alive: &mut dyn FnMut(u32) -> bool) {
        let leases = &self.leases;
        for file in self.files.values_mut() {
            file.holders.retain(|(pid, _), lease| {
                is_alive(*pid) || lease.is_some_and(|id| leases.contains_key(&id))
            });
        }
    }

    /// Refuses VM `uuid` access to a file while another VM owns it, or while
    /// a live process holds it for another VM (invariants 1 and 6). A holder
    /// counts while its process runs (`is_alive`) or its lease is open. The
    /// requesting process itself (`requester`, unless 0 = unknown) is not
    /// shielded from: it already holds the fd.
    ///
    /// # Errors
    /// [`LedgerError::NotOwner`], [`LedgerError::HeldElsewhere`],
    /// [`LedgerError::UnknownFile`].
    pub fn check_access(
        &self,
        name: &Name,
        uuid: Uuid,
        requester: u32,
        is_alive: &mut dyn FnMut(u32) -> bool,
    ) -> LedgerResult<()> {
        let file = self.file(name)?;
        if let Some(owner) = &file.owner {
            if owner.vm.uuid != uuid {
                return Err(LedgerError::NotOwner {
                    name: name.clone(),
                    owner: owner.vm.clone(),
                    lease: owner.lease,
                });
            }
        }
        for (&(pid, holder_vm), &lease) in &file.holders {
            if holder_vm == uuid || (pid != 0 && pid == requester) {
                continue;
            }
            let process_alive = is_alive(pid);
            if process_alive || self.lease_open(lease) {
                let vm = self
                    .leases
                    .values()
                    .find(|l| l.vm.uuid == holder_vm)
                    .map_or_else(|| format!("VM {holder_vm}"), |l| format!("VM {}", l.vm));
                let holder = match lease {
                    Some(id) if !process_alive => {
                        format!("{vm}; it exited, but lease {id} it shared is still open")
                    }
                    _ => vm,
                };
                return Err(LedgerError::HeldElsewhere {
                    name: name.clone(),
                    pid,
                    holder,
                });
            }
        }
        Ok(())
    }
}
