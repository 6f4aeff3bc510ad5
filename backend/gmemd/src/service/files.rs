//! Requests on memory files: CREATE, OPEN, DEPOSIT, DESTROY and SCRUB, and
//! destroying a file's content (SCRUB and REVOKE, invariant 7).

use std::os::fd::OwnedFd;

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    CreateFlags, CreateRequest, DepositRequest, Features, FileInfo, FileRef, MemoryKind, Request,
};
use log::{debug, info};

use super::{Service, ServiceError, ServiceResult, Session};
use crate::ledger::{FileKey, FileSpec, LedgerError};
use crate::memory;
use crate::size::format_size;

impl Service {
    /// Control sessions get fds only as operators: a process that is no VM
    /// has no principal's quota to charge, so it must be trusted.
    fn check_fd_recipient(&self, session: &Session, request: Request) -> ServiceResult<()> {
        if session.lease().is_none() {
            Self::require_operator(session, request)?;
        }
        Ok(())
    }

    pub(super) fn create(
        &mut self,
        session: &Session,
        req: &CreateRequest,
    ) -> ServiceResult<Response> {
        // A feature comes before the request's own checks (§5.3 step 8).
        let prefault = req.flags.contains(CreateFlags::PREFAULT);
        if prefault && !session.features().contains(Features::PREFAULT) {
            return Err(ServiceError::FeatureOff(Request::Create));
        }
        self.check_fd_recipient(session, Request::Create)?;
        let key = self.resolve(session, &FileRef::own(req.name.clone()), Request::Create)?;
        if let Ok(existing) = self.ledger.file(&key) {
            let spec = existing.spec;
            if !req.flags.contains(CreateFlags::OPEN_EXISTING) {
                return Err(LedgerError::FileExists {
                    file: self.ledger.label(&key),
                }
                .into());
            }
            if spec.size != req.size || spec.kind != req.kind {
                return Err(ServiceError::ExistsDifferently {
                    file: self.ledger.label(&key),
                    kind: spec.kind,
                    size: spec.size,
                });
            }
            let opened = self.open_key(session, key.clone())?;
            if prefault {
                self.start_prefault(&key, false);
            }
            return Ok(opened);
        }
        // A file gmemd cannot make is EINVAL, whatever the limits say.
        let page_size = memory::check_create(req.size, req.kind)?;
        let memory = self.new_memory(&req.name, req.size, req.kind, |service| {
            service.check_limits(session, req.size)?;
            service.track_holder(session)
        })?;
        let spec = FileSpec {
            size: req.size,
            kind: req.kind,
            page_size,
        };
        // The client's fd is made before anything is recorded, so a failure
        // leaves no file behind (all or nothing); a pool's file goes back.
        let recorded = self
            .client_fd(&memory.fd, &key, spec.kind)
            .and_then(|fd| Ok((fd, self.ledger.add_file(key.clone(), spec, None)?)));
        let reply_fd = match recorded {
            Ok((fd, ())) => fd,
            Err(e) => {
                if let Some(fid) = memory.pool_fid {
                    self.pool_put_back(req.size, req.kind, fid, memory.fd);
                }
                return Err(e);
            }
        };
        info!(
            "created {} {} ({}{}) for {}",
            req.kind,
            self.ledger.label(&key),
            format_size(req.size),
            if memory.pool_fid.is_some() {
                ", from the pool"
            } else {
                ""
            },
            self.describe(session)
        );
        let from_pool = memory.pool_fid.is_some();
        match memory.pool_fid {
            // Kept and journaled as a pool file already under this id.
            Some(fid) => self.memfiles.restore(key.clone(), fid, memory.fd),
            None => {
                self.memfiles.insert(key.clone(), memory.fd);
            }
        }
        if prefault {
            self.start_prefault(&key, from_pool);
        }
        Ok(self.reply_with_fd(session, &key, spec, reply_fd, true))
    }

    pub(super) fn open(&mut self, session: &Session, file: &FileRef) -> ServiceResult<Response> {
        Self::check_scope_feature(session, file, Request::Open)?;
        self.check_fd_recipient(session, Request::Open)?;
        let key = self.resolve(session, file, Request::Open)?;
        self.open_key(session, key)
    }

    fn open_key(&mut self, session: &Session, key: FileKey) -> ServiceResult<Response> {
        let spec = self.ledger.file(&key)?.spec;
        if spec.kind == MemoryKind::GuestMemfd {
            return Err(ServiceError::GuestMemfdClosed(self.ledger.label(&key)));
        }
        self.track_holder(session)?;
        let own = self
            .memfiles
            .get(&key)
            .expect("every ledger file has an fd");
        let fd = self.client_fd(own, &key, spec.kind)?;
        debug!(
            "opened {} for {}",
            self.ledger.label(&key),
            self.describe(session)
        );
        Ok(self.reply_with_fd(session, &key, spec, fd, false))
    }

    /// Records the recipient as a holder and builds the reply.
    fn reply_with_fd(
        &mut self,
        session: &Session,
        key: &FileKey,
        spec: FileSpec,
        fd: OwnedFd,
        created: bool,
    ) -> Response {
        self.record_holder(session, key);
        Response::ok_with_fds(file_info(spec, created).encode(), vec![fd])
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
        let key = self.resolve(session, &FileRef::own(req.name.clone()), Request::Deposit)?;
        if self.ledger.file(&key).is_ok() {
            return Err(LedgerError::FileExists {
                file: self.ledger.label(&key),
            }
            .into());
        }
        let spec = memory::inspect_deposit(&fd, req.kind)?;
        self.check_limits(session, spec.size)?;
        self.track_holder(session)?;
        // Sealed only once accepted: a refused deposit leaves the fd as it came.
        memory::seal_deposit(&fd, spec.kind)?;
        let depositor = session
            .lease()
            .filter(|_| spec.kind == MemoryKind::GuestMemfd);
        self.ledger.add_file(key.clone(), spec, depositor)?;
        self.memfiles.insert(key.clone(), fd);
        // The depositor keeps its own fd of it.
        self.record_holder(session, &key);
        info!(
            "deposited {} {} ({}) from {}",
            req.kind,
            self.ledger.label(&key),
            format_size(spec.size),
            self.describe(session)
        );
        Ok(Response::ok(file_info(spec, true).encode()))
    }

    /// A VM destroys its unbound files from any of its leases; operators
    /// destroy any file, dropping its bindings.
    pub(super) fn destroy(&mut self, session: &Session, file: &FileRef) -> ServiceResult<Response> {
        Self::check_scope_feature(session, file, Request::Destroy)?;
        if session.lease().is_none() {
            Self::require_operator(session, Request::Destroy)?;
        }
        let key = self.resolve(session, file, Request::Destroy)?;
        let label = self.ledger.label(&key);
        let (dropped, _) = self.ledger.remove_file(&key, session.is_operator())?;
        self.memfiles.remove(&key);
        info!(
            "destroyed {label} for {}{}",
            self.describe(session),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(", dropping {} binding(s)", dropped.len())
            }
        );
        Ok(Response::ok(Vec::new()))
    }

    pub(super) fn scrub(&mut self, session: &Session, file: &FileRef) -> ServiceResult<Response> {
        Self::check_scope_feature(session, file, Request::Scrub)?;
        Self::require_operator(session, Request::Scrub)?;
        let key = self.resolve(session, file, Request::Scrub)?;
        let record = self.ledger.file(&key)?;
        if let Some(owner) = &record.owner {
            return Err(ServiceError::ScrubBound {
                file: self.ledger.label(&key),
                bindings: record.binding_count(),
                owner: owner.vm.clone(),
            });
        }
        self.destroy_content(&key)?;
        info!(
            "scrubbed {} for {}",
            self.ledger.label(&key),
            self.describe(session)
        );
        Ok(Response::ok(Vec::new()))
    }

    /// Punches out the file's pages, then swaps in a fresh file of the same
    /// name, size and kind: whoever kept the old fd reads zeros, and what
    /// they write lands in an inode nobody will be given again.
    pub(super) fn destroy_content(&mut self, key: &FileKey) -> ServiceResult<()> {
        let spec = self.ledger.file(key)?.spec;
        // Make the replacement first: if that fails, nothing is destroyed.
        let fresh = if spec.kind == MemoryKind::GuestMemfd {
            None
        } else {
            Some(memory::create(&key.name, spec.size, spec.kind)?)
        };
        if let Some(old) = self.memfiles.get(key) {
            punch(old, &spec, &self.ledger.label(key));
        }
        if let Some(fresh) = fresh {
            self.memfiles.insert(key.clone(), fresh);
            self.ledger.replace_inode(key)?;
        }
        Ok(())
    }

    /// The fd a client receives for a memory file (see [`memory::reopen`]).
    fn client_fd(&self, own: &OwnedFd, key: &FileKey, kind: MemoryKind) -> ServiceResult<OwnedFd> {
        memory::reopen(own, kind).map_err(|source| ServiceError::DupFd {
            file: self.ledger.label(key),
            source,
        })
    }
}

/// What a reply says of a file.
pub(super) fn file_info(spec: FileSpec, created: bool) -> FileInfo {
    FileInfo {
        size: spec.size,
        page_size: spec.page_size,
        kind: spec.kind,
        created,
    }
}

/// Frees a file's pages; whoever still maps it reads zeros.
pub(super) fn punch(fd: &OwnedFd, spec: &FileSpec, label: &str) {
    if let Err(e) = memory::scrub(fd, spec) {
        // memfd_secret has no hole punching; its inode is dropped by the
        // caller all the same, cut off from every future user.
        debug!("punching {label}: {e}");
    }
}
