//! Periodic work, driven by the event loop's timer: orphans (files of VMs
//! that have had no lease for a while) are destroyed when the operator
//! asked for it (`--expire-orphans`), and retired memory whose holders have
//! all gone stops counting; the warm pools are tended.

use gmem_protocol::wire::VmSelector;
use log::info;

use super::files::punch;
use super::Service;

impl Service {
    /// Runs the periodic work; cheap when there is nothing to do.
    pub fn upkeep(&mut self) {
        self.tend_warm();
        self.persist();
        if !self.ledger.retired().is_empty() {
            self.prune_holders();
        }
        self.end_detached_leases();
        let Some(after) = self.config.limits.expire_orphans else {
            return;
        };
        let now = self.now();
        let expired: Vec<_> = self
            .ledger
            .vms()
            .filter(|vm| {
                vm.idle_since
                    .is_some_and(|since| now.saturating_sub(since) >= after.as_secs())
            })
            .map(|vm| vm.vm.clone())
            .collect();
        for vm in expired {
            // No lease, so forgetting cannot be refused.
            let Ok((entry, files)) = self.ledger.forget(&VmSelector::Uuid(vm.uuid)) else {
                continue;
            };
            for (key, spec) in &files {
                if let Some(fd) = self.memfiles.remove(key) {
                    punch(&fd, spec, &format!("{}/{}", vm.name, key.name));
                }
            }
            info!(
                "VM {vm} had no lease for {}s (--expire-orphans): its {} file(s) destroyed, \
                 tie to {} dropped",
                after.as_secs(),
                files.len(),
                entry.tie
            );
        }
        self.persist();
    }

    /// Ends the leases a restart found without their connection once the
    /// grace period has passed; their VMs keep their files.
    fn end_detached_leases(&mut self) {
        if self.detached.is_empty() {
            return;
        }
        let grace = self.config.limits.lease_grace.as_secs();
        let now = self.now();
        let due: Vec<_> = self
            .detached
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= grace)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.detached.remove(&id);
            self.end_lease(
                id,
                &format!("its connection did not survive a gmemd restart ({grace} s grace)"),
            );
        }
        self.persist();
    }

    /// Seconds since VM `vm`'s last lease ended; 0 while it has one.
    pub(super) fn idle_secs(&self, idle_since: Option<u64>) -> u64 {
        idle_since.map_or(0, |since| self.now().saturating_sub(since))
    }
}
