//! Retired memory: a file that left the ledger (destroyed, transferred,
//! scrubbed, forgotten) while processes gmemd handed it to may still hold
//! its fd. Whatever they write into it is memory in use, so it keeps
//! counting against its principal's quota and the global limit until the
//! lease it was handed out under has ended and those processes have
//! exited: create, fill, destroy, repeat cannot exceed the quota.

use std::collections::BTreeMap;

use gmem_protocol::wire::LeaseId;

use super::{Change, FileKey, FileRecord, Ledger, Space};
use crate::principal::Tie;

/// Memory gmemd let go of that earlier holders may still reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// Who pays for it (`None`: an operators' file).
    pub tie: Option<Tie>,
    /// Its size.
    pub bytes: u64,
    /// Processes that received its fd, with the lease they got it through.
    pub(super) holders: BTreeMap<u32, Option<LeaseId>>,
}

impl Retired {
    /// Retired memory as a journal describes it.
    pub fn new(tie: Option<Tie>, bytes: u64, holders: Vec<(u32, Option<LeaseId>)>) -> Self {
        Retired {
            tie,
            bytes,
            holders: holders.into_iter().collect(),
        }
    }

    /// Its holders.
    pub fn holders(&self) -> impl Iterator<Item = (u32, Option<LeaseId>)> + '_ {
        self.holders.iter().map(|(p, l)| (*p, *l))
    }
}

impl Ledger {
    /// Keeps charging a file that leaves the ledger to its principal while
    /// anyone gmemd handed it to may hold it.
    pub(super) fn retire(&mut self, key: &FileKey, file: &FileRecord) {
        if file.holders.is_empty() {
            return;
        }
        let tie = match key.space {
            Space::Vm(uuid) => self.vms.get(&uuid).map(|vm| vm.tie.clone()),
            Space::Operators => None,
        };
        self.retired_bytes += file.spec.size;
        self.touch(Change::Retired);
        self.retired.push(Retired {
            tie,
            bytes: file.spec.size,
            holders: file.holders.clone(),
        });
    }

    /// Retired memory still charged, oldest first.
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// Bytes of retired memory still charged.
    pub fn retired_bytes(&self) -> u64 {
        self.retired_bytes
    }

    /// Drops retired memory once no holder can reach it: each holder's
    /// process is gone (`is_alive`) and its lease closed.
    pub(super) fn prune_retired(&mut self, is_alive: &mut dyn FnMut(u32) -> bool) {
        let leases = &self.leases;
        let mut freed = 0;
        let mut changed = false;
        self.retired.retain_mut(|r| {
            let before = r.holders.len();
            r.holders.retain(|pid, lease| {
                is_alive(*pid) || lease.is_some_and(|id| leases.contains_key(&id))
            });
            if r.holders.is_empty() {
                freed += r.bytes;
            }
            changed |= r.holders.len() != before;
            !r.holders.is_empty()
        });
        self.retired_bytes -= freed;
        if changed {
            self.touch(Change::Retired);
        }
    }
}
