//! Limits and per-principal quotas, checked before a file is made. A
//! principal is a VM's tie: all the VMs tied alike share its quota, and
//! memory it let go of that holders may still reach (retired) counts too,
//! so create, fill, destroy, repeat stops at the quota.

use super::{Service, ServiceError, ServiceResult, Session};
use crate::size::format_size;

impl Service {
    /// Refuses a new file of `size` bytes for `session` if a global limit,
    /// the VM's file limit or its principal's quota would be exceeded.
    /// Operators' own files count against the global limits only. Retired
    /// memory whose holders have all gone since the last upkeep is let go
    /// before a refusal.
    /// Ready pool files are let go, one at a time, before a refusal of
    /// `--max-memory` or `--max-files`: files in use come first.
    pub(super) fn check_limits(&mut self, session: &Session, size: u64) -> ServiceResult<()> {
        let mut result = match self.limits_allow(session, size) {
            Err(ServiceError::MemoryLimit { .. } | ServiceError::MemoryQuota { .. })
                if !self.ledger.retired().is_empty() =>
            {
                self.prune_holders();
                self.limits_allow(session, size)
            }
            other => other,
        };
        while matches!(
            result,
            Err(ServiceError::MemoryLimit { .. } | ServiceError::TooManyFiles { .. })
        ) && self.release_pool_file()
        {
            result = self.limits_allow(session, size);
        }
        result
    }

    fn limits_allow(&self, session: &Session, size: u64) -> ServiceResult<()> {
        let limits = &self.config.limits;
        let used = self.memory_in_use();
        if used.saturating_add(size) > limits.max_total_memory {
            return Err(ServiceError::MemoryLimit {
                used: format_size(used),
                requested: format_size(size),
                limit: format_size(limits.max_total_memory),
            });
        }
        if self.ledger.file_count() + self.pool.file_count() >= limits.max_files {
            return Err(ServiceError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        let Some(vm) = self.vm_of(session) else {
            return Ok(());
        };
        let entry = self.ledger.vm(vm.uuid).expect("a leased VM is known");
        if entry.files >= limits.max_files_per_vm {
            return Err(ServiceError::FileLimit {
                vm: vm.clone(),
                limit: limits.max_files_per_vm,
            });
        }
        let quotas = &self.config.quotas;
        let (files, bytes) = self.ledger.usage_of(&entry.tie);
        if files >= quotas.files {
            return Err(ServiceError::FileQuota {
                tie: entry.tie.to_string(),
                limit: quotas.files,
            });
        }
        if bytes.saturating_add(size) > quotas.memory {
            return Err(ServiceError::MemoryQuota {
                tie: entry.tie.to_string(),
                used: format_size(bytes),
                requested: format_size(size),
                limit: format_size(quotas.memory),
            });
        }
        Ok(())
    }
}
