//! Holders: which processes received a file's fd, and through which lease.
//!
//! Isolation does not rest on this (DESIGN invariant 6: a VM only ever gets
//! files of its own namespace, and memory that moves between namespaces
//! moves to a fresh inode). It is accounting: a destroyed file's memory
//! lives on in whoever kept its fd, and is charged to its principal until
//! those processes have exited and the lease they got it through has
//! ended. Liveness comes from outside (`is_alive`, pidfds in the service):
//! the ledger has no clock and no fds.

use gmem_protocol::wire::LeaseId;

use super::{Change, FileKey, Ledger, LedgerError, LedgerResult};

impl Ledger {
    /// Records that process `pid` received the file's fd through `lease`
    /// (if it came over one). Such a holder counts while its process runs
    /// or while that lease is open: whoever keeps the lease socket (a QEMU
    /// the process started and handed the fds to) may hold the fds too.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn add_holder(
        &mut self,
        key: &FileKey,
        pid: u32,
        lease: Option<LeaseId>,
    ) -> LedgerResult<()> {
        let label = self.label(key);
        let file = self
            .files
            .get_mut(key)
            .ok_or(LedgerError::UnknownFile { file: label })?;
        let through = file.holders.entry(pid).or_insert(lease);
        // A later lease keeps the process's record current.
        if lease.is_some() {
            *through = lease;
        }
        self.touch(Change::File(key.clone()));
        Ok(())
    }

    /// Whether a lease is open.
    pub fn lease_open(&self, lease: Option<LeaseId>) -> bool {
        lease.is_some_and(|id| self.leases.contains_key(&id))
    }

    /// The file's inode was replaced (SCRUB): its earlier holders reach
    /// only the old one, which is retired with them.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn replace_inode(&mut self, key: &FileKey) -> LedgerResult<()> {
        let file = self.file(key)?.clone();
        self.retire(key, &file);
        self.files
            .get_mut(key)
            .expect("checked above")
            .holders
            .clear();
        self.touch(Change::File(key.clone()));
        Ok(())
    }

    /// Forgets the holders `is_alive` reports gone whose lease (if any) is
    /// closed too, in every file and in retired memory.
    pub fn prune_holders(&mut self, is_alive: &mut dyn FnMut(u32) -> bool) {
        let leases = &self.leases;
        let changes = &mut self.changes;
        for (key, file) in &mut self.files {
            let before = file.holders.len();
            file.holders.retain(|pid, lease| {
                is_alive(*pid) || lease.is_some_and(|id| leases.contains_key(&id))
            });
            if file.holders.len() != before {
                changes.insert(Change::File(key.clone()));
            }
        }
        self.prune_retired(is_alive);
    }
}
