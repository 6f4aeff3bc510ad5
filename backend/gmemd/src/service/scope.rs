//! Which namespace a name means, and what a session may see (DESIGN
//! invariant 6). A plain name on a lease means the lease's VM's file, on a
//! control session an operators' file; naming another VM's file takes the
//! `VM_SCOPE` feature and an operator. A non-operator sees its own VMs
//! only: the lease's VM, or on a control session the VMs tied to its
//! principal.

use std::collections::BTreeSet;

use gmem_protocol::wire::{Features, FileRef, Request, Scope, Uuid, VmSelector};

use super::{Service, ServiceError, ServiceResult, Session};
use crate::ledger::FileKey;

/// The VMs a session may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum View {
    /// Everything (operators).
    All,
    /// These VMs' files and leases only.
    Vms(BTreeSet<Uuid>),
}

impl View {
    pub(super) fn shows(&self, uuid: Option<Uuid>) -> bool {
        match (self, uuid) {
            (View::All, _) => true,
            (View::Vms(vms), Some(uuid)) => vms.contains(&uuid),
            (View::Vms(_), None) => false,
        }
    }
}

impl Service {
    /// The file `file` names for `session` in request `request`.
    ///
    /// # Errors
    /// [`ServiceError::FeatureOff`] for a scoped name without `VM_SCOPE`,
    /// [`ServiceError::NotOperator`] for a non-operator naming anything but
    /// its own VM, [`ServiceError::Ledger`] for an unknown VM.
    /// A scoped name needs `VM_SCOPE` (§5.3 step 8), checked before who
    /// may send the request (step 9): a session that did not negotiate the
    /// feature is told so whoever it is.
    pub(super) fn check_scope_feature(
        session: &Session,
        file: &FileRef,
        request: Request,
    ) -> ServiceResult<()> {
        if !matches!(file.scope, Scope::Own) && !session.features().contains(Features::VM_SCOPE) {
            return Err(ServiceError::FeatureOff(request));
        }
        Ok(())
    }

    pub(super) fn resolve(
        &self,
        session: &Session,
        file: &FileRef,
        request: Request,
    ) -> ServiceResult<FileKey> {
        let own = self.vm_of(session);
        let name = file.name.clone();
        match &file.scope {
            Scope::Own => Ok(match own {
                Some(vm) => FileKey::vm(vm.uuid, name),
                None => FileKey::operators(name),
            }),
            scoped => {
                if !session.features().contains(Features::VM_SCOPE) {
                    return Err(ServiceError::FeatureOff(request));
                }
                let is_own = |selector: &VmSelector| {
                    own.is_some_and(|vm| match selector {
                        VmSelector::Uuid(u) => *u == vm.uuid,
                        VmSelector::Name(n) => *n == vm.name,
                    })
                };
                match scoped {
                    Scope::Vm(selector) if is_own(selector) => {
                        Ok(FileKey::vm(own.expect("is_own").uuid, name))
                    }
                    // Checked before the lookup, so a non-operator learns
                    // nothing of other VMs, not even whether they exist.
                    Scope::Vm(selector) => {
                        Self::require_operator(session, request)?;
                        Ok(FileKey::vm(self.ledger.find_vm(selector)?, name))
                    }
                    Scope::Operators | Scope::Own => {
                        Self::require_operator(session, request)?;
                        Ok(FileKey::operators(name))
                    }
                }
            }
        }
    }

    /// What `session` may see in STATUS.
    pub(super) fn view(&self, session: &Session) -> View {
        if session.is_operator() {
            return View::All;
        }
        let vms = match self.vm_of(session) {
            Some(vm) => BTreeSet::from([vm.uuid]),
            None => self
                .ledger
                .vms()
                .filter(|vm| vm.tie.admits(&session.principal))
                .map(|vm| vm.vm.uuid)
                .collect(),
        };
        View::Vms(vms)
    }
}
