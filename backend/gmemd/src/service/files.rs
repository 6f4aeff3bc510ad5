//! Requests on memory files: CREATE, OPEN, DEPOSIT, DESTROY and SCRUB, the
//! limits they count against, and destroying a file's content (SCRUB and
//! REVOKE, invariant 7).

use std::os::fd::OwnedFd;

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    CreateFlags, CreateRequest, DepositRequest, FileInfo, MemoryKind, Name, Request,
};
use log::{debug, info};

use super::{Service, ServiceError, ServiceResult, Session};
use crate::ledger::{FileSpec, LedgerError};
use crate::memory;
use crate::size::format_size;

impl Service {
    /// Control sessions get fds only as operators: a process that is no VM
    /// is not tracked as a holder, so it must be trusted.
    fn check_fd_recipient(&self, session: &Session, request: Request) -> ServiceResult<()> {
        if session.lease().is_none() {
            Self::require_operator(session, request)?;
        }
        Ok(())
    }

    fn check_limits(&self, session: &Session, size: u64) -> ServiceResult<()> {
        let limits = &self.config.limits;
        let used = self.ledger.total_size();
        if used.saturating_add(size) > limits.max_total_memory {
            return Err(ServiceError::MemoryLimit {
                used: format_size(used),
                requested: format_size(size),
                limit: format_size(limits.max_total_memory),
            });
        }
        if let Some(vm) = self.vm_of(session) {
            if self.ledger.files_created_by(vm.uuid) >= limits.max_files_per_vm {
                return Err(ServiceError::FileLimit {
                    vm: vm.clone(),
                    limit: limits.max_files_per_vm,
                });
            }
        }
        Ok(())
    }

    pub(super) fn create(
        &mut self,
        session: &Session,
        req: &CreateRequest,
    ) -> ServiceResult<Response> {
        self.check_fd_recipient(session, Request::Create)?;
        if let Ok(existing) = self.ledger.file(&req.name) {
            let spec = existing.spec;
            if !req.flags.contains(CreateFlags::OPEN_EXISTING) {
                return Err(LedgerError::FileExists {
                    name: req.name.clone(),
                }
                .into());
            }
            if spec.size != req.size || spec.kind != req.kind {
                return Err(ServiceError::ExistsDifferently {
                    name: req.name.clone(),
                    kind: spec.kind,
                    size: spec.size,
                });
            }
            return self.open(session, &req.name);
        }
        // A file gmemd cannot make is EINVAL, whatever the limits say.
        let page_size = memory::check_create(req.size, req.kind)?;
        self.check_limits(session, req.size)?;
        let fd = memory::create(&req.name, req.size, req.kind)?;
        let spec = FileSpec {
            size: req.size,
            kind: req.kind,
            page_size,
        };
        // The client's fd is made before anything is recorded, so a failure
        // leaves no file behind (all or nothing).
        let reply_fd = client_fd(&fd, &req.name, spec.kind)?;
        let creator = self.vm_of(session).cloned();
        self.ledger.add_file(req.name.clone(), spec, creator)?;
        self.fds.insert(req.name.clone(), fd);
        info!(
            "created {} {} ({}) for {}",
            req.kind,
            req.name,
            format_size(req.size),
            self.describe(session)
        );
        Ok(self.reply_with_fd(session, &req.name, spec, reply_fd, true))
    }

    pub(super) fn open(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        self.check_fd_recipient(session, Request::Open)?;
        let spec = self.ledger.file(name)?.spec;
        if spec.kind == MemoryKind::GuestMemfd {
            return Err(ServiceError::GuestMemfdClosed(name.clone()));
        }
        if let Some(vm) = self.vm_of(session) {
            // Handing the fd to another VM is as good as binding it there.
            self.check_access(session, name, vm.uuid)?;
        }
        let own = self.fds.get(name).expect("every ledger file has an fd");
        let fd = client_fd(own, name, spec.kind)?;
        debug!("opened {name} for {}", self.describe(session));
        Ok(self.reply_with_fd(session, name, spec, fd, false))
    }

    /// Records the recipient as a holder (invariant 6) and builds the reply.
    fn reply_with_fd(
        &mut self,
        session: &Session,
        name: &Name,
        spec: FileSpec,
        fd: OwnedFd,
        created: bool,
    ) -> Response {
        self.record_holder(session, name);
        let info = FileInfo {
            size: spec.size,
            page_size: spec.page_size,
            kind: spec.kind,
            created,
        };
        Response::ok_with_fds(info.encode(), vec![fd])
    }

    pub(super) fn deposit(
        &mut self,
        session: &Session,
        req: &DepositRequest,
        fd: OwnedFd,
    ) -> ServiceResult<Response> {
        if req.kind == MemoryKind::GuestMemfd {
            // Only a VM's own VMM holds its guest_memfd; gmemd closes it
            // when that lease ends (invariant 5).
            Self::require_lease(session, Request::Deposit)?;
        } else {
            self.check_fd_recipient(session, Request::Deposit)?;
        }
        if self.ledger.file(&req.name).is_ok() {
            return Err(LedgerError::FileExists {
                name: req.name.clone(),
            }
            .into());
        }
        let spec = memory::inspect_deposit(&fd, req.kind)?;
        self.check_limits(session, spec.size)?;
        // Sealed only once accepted: a refused deposit leaves the fd as it came.
        memory::seal_deposit(&fd, spec.kind)?;
        let creator = self.vm_of(session).cloned();
        self.ledger.add_file(req.name.clone(), spec, creator)?;
        self.fds.insert(req.name.clone(), fd);
        self.record_holder(session, &req.name);
        info!(
            "deposited {} {} ({}) from {}",
            req.kind,
            req.name,
            format_size(spec.size),
            self.describe(session)
        );
        let info = FileInfo {
            size: spec.size,
            page_size: spec.page_size,
            kind: spec.kind,
            created: true,
        };
        Ok(Response::ok(info.encode()))
    }

    /// Operators destroy any file (dropping its bindings); a VM destroys an
    /// unbound file it created, from any of its leases. Memory an operator
    /// made (a VM's RAM kept across relaunches) is an operator's.
    pub(super) fn destroy(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        let creator = self.ledger.file(name)?.creator().map(|c| c.uuid);
        let own = self
            .vm_of(session)
            .is_some_and(|vm| Some(vm.uuid) == creator);
        if !own {
            Self::require_operator(session, Request::Destroy)?;
        }
        let dropped = self.ledger.remove_file(name, session.is_operator())?;
        self.fds.remove(name);
        info!(
            "destroyed {name} for {}{}",
            self.describe(session),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(", dropping {} binding(s)", dropped.len())
            }
        );
        Ok(Response::ok(Vec::new()))
    }

    pub(super) fn scrub(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        Self::require_operator(session, Request::Scrub)?;
        let file = self.ledger.file(name)?;
        if let Some(owner) = &file.owner {
            return Err(ServiceError::ScrubBound {
                name: name.clone(),
                bindings: file.binding_count(),
                owner: owner.vm.clone(),
            });
        }
        self.destroy_content(name)?;
        info!("scrubbed {name} for {}", self.describe(session));
        Ok(Response::ok(Vec::new()))
    }

    /// Punches out the file's pages, then swaps in a fresh file of the same
    /// name, size and kind: whoever kept the old fd reads zeros, and what
    /// they write lands in an inode no other VM will ever be given.
    pub(super) fn destroy_content(&mut self, name: &Name) -> ServiceResult<()> {
        let spec = self.ledger.file(name)?.spec;
        // Make the replacement first: if that fails, nothing is destroyed.
        let fresh = if spec.kind == MemoryKind::GuestMemfd {
            None
        } else {
            Some(memory::create(name, spec.size, spec.kind)?)
        };
        if let Some(fd) = self.fds.get(name) {
            if let Err(e) = memory::scrub(fd, &spec) {
                // memfd_secret has no hole punching; the swap below still
                // cuts every old holder off from future users.
                debug!("punching {name}: {e}");
            }
        }
        if let Some(fresh) = fresh {
            self.fds.insert(name.clone(), fresh);
        }
        self.ledger.clear_holders(name)?;
        Ok(())
    }
}

/// The fd a client receives for a memory file (see [`memory::reopen`]).
fn client_fd(own: &OwnedFd, name: &Name, kind: MemoryKind) -> ServiceResult<OwnedFd> {
    memory::reopen(own, kind).map_err(|source| ServiceError::DupFd {
        name: name.clone(),
        source,
    })
}
