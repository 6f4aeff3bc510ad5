//! The daemon's policy: applies decoded requests to the ledger, owns the
//! memory fds, and decides who may do what.
//!
//! No sockets here: the event loop hands each request in with the session it
//! came from and sends back the [`Response`]. Every refusal goes through
//! [`ServiceError`], which has one errno mapping and one close decision.

mod error;
mod holders;
mod session;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    BindRequest, CreateFlags, CreateRequest, DepositRequest, Features, FileInfo, Hello, HelloReply,
    MemoryKind, Name, Request, RequestBody, RevokeReport, VmId, VmSelector, VERSION,
};
use log::{debug, info, warn};

pub use error::ServiceError;
pub(crate) use error::ServiceResult;
use session::SessionState;
pub use session::{Session, SessionHandler, SessionId};

use crate::config::Config;
use crate::ledger::{FileSpec, LeaseId, Ledger, LedgerError, Peer};
use crate::memory;
use crate::size::format_size;

/// The memory files and their ledger.
#[derive(Debug)]
pub struct Service {
    config: Config,
    ledger: Ledger,
    fds: BTreeMap<Name, OwnedFd>,
    /// Deposited guest_memfds and the lease that deposited them (invariant 5).
    guest_memfds: BTreeMap<Name, LeaseId>,
    /// pidfds of processes that received a memory fd (invariant 6).
    pidfds: HashMap<u32, OwnedFd>,
    next_lease: LeaseId,
    revoked: Vec<LeaseId>,
}

const SERVER_FEATURES: Features = Features::all();

impl Service {
    /// A service with no files.
    pub fn new(config: Config) -> Self {
        Service {
            config,
            ledger: Ledger::new(),
            fds: BTreeMap::new(),
            guest_memfds: BTreeMap::new(),
            pidfds: HashMap::new(),
            next_lease: 1,
            revoked: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The ledger, read-only.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Starts a session for a new connection.
    pub fn open_session(&self, id: SessionId, peer: Peer) -> Session {
        let session = Session {
            id,
            peer,
            allowed: self.config.allowed_uids.contains(&peer.uid),
            admin: self.config.admin_uids.contains(&peer.uid),
            state: SessionState::AwaitingHello,
        };
        debug!(
            "connection {id} from pid {} uid {}{}",
            peer.pid,
            peer.uid,
            if session.allowed {
                ""
            } else {
                " (uid not allowed)"
            }
        );
        session
    }

    /// Whether `lease` was revoked and its connection not yet closed: the
    /// event loop serves it nothing more.
    pub fn is_revoked(&self, lease: LeaseId) -> bool {
        self.revoked.contains(&lease)
    }

    /// Leases ended by REVOKE whose connections the event loop must close.
    pub fn take_revoked(&mut self) -> Vec<LeaseId> {
        std::mem::take(&mut self.revoked)
    }

    /// Ends a session; if it held a lease, the lease ends with it.
    pub fn close_session(&mut self, session: &Session, reason: &str) {
        if let Some(id) = session.lease() {
            self.end_lease(id, reason);
        } else {
            debug!("{} closed: {reason}", session.describe());
        }
    }

    fn end_lease(&mut self, id: LeaseId, reason: &str) -> Option<(usize, Vec<Name>)> {
        let end = match self.ledger.close_lease(id) {
            Ok(end) => end,
            // Already ended (revoked before its connection closed).
            Err(_) => return None,
        };
        for b in &end.bindings {
            info!(
                "lease {id} (VM {}): dropped binding slot {} gpa {:#x} {} +{:#x} size {:#x}",
                end.vm.name, b.slot, b.gpa, b.file, b.offset, b.size
            );
        }
        // A deposited guest_memfd pins its VM in the kernel; with the lease
        // gone and nothing bound, gmemd lets go of it (invariant 5).
        let deposited: Vec<Name> = self
            .guest_memfds
            .iter()
            .filter(|(_, lease)| **lease == id)
            .map(|(name, _)| name.clone())
            .collect();
        for name in deposited {
            match self.ledger.remove_file(&name, false) {
                Ok(_) => {
                    self.guest_memfds.remove(&name);
                    self.fds.remove(&name);
                    info!(
                        "lease {id} (VM {}): closed guest_memfd {name}, gmemd keeps no VM alive",
                        end.vm.name
                    );
                }
                // Only its own VM can bind it, and that VM's bindings just
                // went with the lease; anything else is a bug worth seeing.
                Err(e) => warn!("lease {id}: keeping guest_memfd {name}: {e}"),
            }
        }
        self.prune_holders();
        info!(
            "lease {id} ended ({reason}): VM {}, {} binding(s) dropped, owner cleared on [{}]",
            end.vm,
            end.bindings.len(),
            join(&end.released)
        );
        Some((end.bindings.len(), end.released))
    }

    /// Handles one request of `session`.
    pub fn handle(
        &mut self,
        session: &mut Session,
        request: RequestBody,
        fds: Vec<OwnedFd>,
    ) -> Response {
        let code = request.request();
        match self.dispatch(session, request, fds) {
            Ok(response) => response,
            Err(err) => {
                warn!("refused {code} from {}: {err}", session.describe());
                let mut response = Response::error(err.errno(), &err.to_string());
                response.close = err.should_close();
                response
            }
        }
    }

    fn dispatch(
        &mut self,
        session: &mut Session,
        request: RequestBody,
        mut fds: Vec<OwnedFd>,
    ) -> ServiceResult<Response> {
        let code = request.request();
        if !session.allowed {
            return Err(ServiceError::NotAllowed {
                uid: session.peer.uid,
            });
        }
        match (&session.state, &request) {
            (SessionState::AwaitingHello, RequestBody::Hello(_)) => {}
            (SessionState::AwaitingHello, _) => return Err(ServiceError::NoHandshake(code)),
            (_, RequestBody::Hello(_)) => return Err(ServiceError::SecondHello),
            _ => {}
        }
        let needed = match code {
            Request::Deposit => Features::DEPOSIT,
            Request::Scrub => Features::SCRUB,
            Request::Revoke => Features::REVOKE,
            _ => Features::empty(),
        };
        if !session.features().contains(needed) {
            return Err(ServiceError::FeatureOff(code));
        }
        match request {
            RequestBody::Hello(hello) => self.hello(session, hello),
            RequestBody::Create(create) => self.create(session, &create),
            RequestBody::Open(name) => self.open(session, &name),
            RequestBody::Bind(bind) => self.bind(session, &bind),
            RequestBody::Unbind { slot } => self.unbind(session, slot),
            RequestBody::Deposit(deposit) => self.deposit(session, &deposit, fds.remove(0)),
            RequestBody::Destroy(name) => self.destroy(session, &name),
            RequestBody::Status(query) => Ok(self.status(query)),
            RequestBody::Revoke(vm) => self.revoke(session, &vm),
            RequestBody::Scrub(name) => self.scrub(session, &name),
        }
    }

    fn hello(&mut self, session: &mut Session, hello: Hello) -> ServiceResult<Response> {
        let features = hello.features & SERVER_FEATURES;
        let lease = match hello.vm {
            None => {
                session.state = SessionState::Control { features };
                debug!("{} is a control session", session.describe());
                0
            }
            Some(vm) => {
                let id = self.next_lease;
                self.ledger.open_lease(id, vm.clone(), session.peer)?;
                self.next_lease += 1;
                info!(
                    "lease {id} opened: VM {vm}, pid {}, uid {}",
                    session.peer.pid, session.peer.uid
                );
                session.state = SessionState::Lease { id, vm, features };
                id
            }
        };
        Ok(Response::ok(
            HelloReply {
                features,
                lease,
                version: VERSION,
            }
            .encode(),
        ))
    }

    fn require_lease(session: &Session, code: Request) -> ServiceResult<(LeaseId, VmId)> {
        match &session.state {
            SessionState::Lease { id, vm, .. } => Ok((*id, vm.clone())),
            _ => Err(ServiceError::NeedsLease(code)),
        }
    }

    fn require_admin(session: &Session, request: Request) -> ServiceResult<()> {
        if session.admin {
            Ok(())
        } else {
            Err(ServiceError::NotOperator {
                request,
                uid: session.peer.uid,
            })
        }
    }

    /// Control sessions get fds only as operators: a process that is no VM
    /// is not tracked as a holder, so it must be trusted.
    fn check_fd_recipient(session: &Session, request: Request) -> ServiceResult<()> {
        if session.vm().is_none() {
            Self::require_admin(session, request)?;
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
        if let Some(lease) = session.lease() {
            if self.ledger.files_created_by(lease) >= limits.max_files_per_lease {
                return Err(ServiceError::FileLimit {
                    limit: limits.max_files_per_lease,
                });
            }
        }
        Ok(())
    }

    fn create(&mut self, session: &Session, req: &CreateRequest) -> ServiceResult<Response> {
        Self::check_fd_recipient(session, Request::Create)?;
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
        self.check_limits(session, req.size)?;
        let fd = memory::create(&req.name, req.size, req.kind)?;
        let spec = FileSpec {
            size: req.size,
            kind: req.kind,
            page_size: req.kind.page_size(),
        };
        // The client's fd is made before anything is recorded, so a failure
        // leaves no file behind (all or nothing).
        let reply_fd = client_fd(&fd, &req.name, spec.kind)?;
        self.ledger
            .add_file(req.name.clone(), spec, session.lease())?;
        self.fds.insert(req.name.clone(), fd);
        info!(
            "created {} {} ({}) for {}",
            req.kind,
            req.name,
            format_size(req.size),
            session.describe()
        );
        Ok(self.reply_with_fd(session, &req.name, spec, reply_fd, true))
    }

    fn open(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        Self::check_fd_recipient(session, Request::Open)?;
        let spec = self.ledger.file(name)?.spec;
        if spec.kind == MemoryKind::GuestMemfd {
            return Err(ServiceError::GuestMemfdClosed(name.clone()));
        }
        if let Some(vm) = session.vm() {
            // Handing the fd to another VM is as good as binding it there.
            self.check_access(session, name, vm.uuid)?;
        }
        let own = self.fds.get(name).expect("every ledger file has an fd");
        let fd = client_fd(own, name, spec.kind)?;
        debug!("opened {name} for {}", session.describe());
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
        if let Some(vm) = session.vm() {
            self.record_holder(session, name, vm.uuid);
        }
        let info = FileInfo {
            size: spec.size,
            page_size: spec.page_size,
            kind: spec.kind,
            created,
        };
        Response::ok_with_fds(info.encode(), vec![fd])
    }

    fn bind(&mut self, session: &Session, req: &BindRequest) -> ServiceResult<Response> {
        let (lease, vm) = Self::require_lease(session, Request::Bind)?;
        let pidfds = &self.pidfds;
        let sets_owner = self
            .ledger
            .bind(lease, req, &mut |pid| holders::pid_alive(pidfds, pid))?;
        info!(
            "lease {lease} (VM {}): bound slot {} gpa {:#x} -> {} +{:#x} size {:#x}{}",
            vm.name,
            req.slot,
            req.gpa,
            req.name,
            req.offset,
            req.size,
            if sets_owner { ", owner set" } else { "" }
        );
        Ok(Response::ok(Vec::new()))
    }

    fn unbind(&mut self, session: &Session, slot: u32) -> ServiceResult<Response> {
        let (lease, vm) = Self::require_lease(session, Request::Unbind)?;
        let (binding, cleared) = self.ledger.unbind(lease, slot)?;
        info!(
            "lease {lease} (VM {}): unbound slot {slot} ({} +{:#x}){}",
            vm.name,
            binding.file,
            binding.offset,
            if cleared { ", owner cleared" } else { "" }
        );
        Ok(Response::ok(Vec::new()))
    }

    fn deposit(
        &mut self,
        session: &Session,
        req: &DepositRequest,
        fd: OwnedFd,
    ) -> ServiceResult<Response> {
        if req.kind == MemoryKind::GuestMemfd {
            Self::require_lease(session, Request::Deposit)?;
        } else {
            Self::check_fd_recipient(session, Request::Deposit)?;
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
        self.ledger
            .add_file(req.name.clone(), spec, session.lease())?;
        self.fds.insert(req.name.clone(), fd);
        if let (MemoryKind::GuestMemfd, Some(lease)) = (req.kind, session.lease()) {
            self.guest_memfds.insert(req.name.clone(), lease);
        }
        if let Some(vm) = session.vm() {
            self.record_holder(session, &req.name, vm.uuid);
        }
        info!(
            "deposited {} {} ({}) from {}",
            req.kind,
            req.name,
            format_size(spec.size),
            session.describe()
        );
        let info = FileInfo {
            size: spec.size,
            page_size: spec.page_size,
            kind: spec.kind,
            created: true,
        };
        Ok(Response::ok(info.encode()))
    }

    /// Operators destroy any file (dropping its bindings); others only an
    /// unbound file their own lease created. Memory that outlived the lease
    /// that made it (a VM's RAM kept across relaunches) is an operator's.
    fn destroy(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        self.ledger.file(name)?;
        let own = session.lease().is_some() && self.ledger.creator_of(name) == session.lease();
        if !own {
            Self::require_admin(session, Request::Destroy)?;
        }
        let dropped = self.ledger.remove_file(name, session.admin)?;
        self.fds.remove(name);
        self.guest_memfds.remove(name);
        info!(
            "destroyed {name} for {}{}",
            session.describe(),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(", dropping {} binding(s)", dropped.len())
            }
        );
        Ok(Response::ok(Vec::new()))
    }

    fn scrub(&mut self, session: &Session, name: &Name) -> ServiceResult<Response> {
        Self::require_admin(session, Request::Scrub)?;
        let file = self.ledger.file(name)?;
        if file.binding_count() > 0 {
            return Err(ServiceError::ScrubBound {
                name: name.clone(),
                bindings: file.binding_count(),
            });
        }
        self.destroy_content(name)?;
        info!("scrubbed {name} for {}", session.describe());
        Ok(Response::ok(Vec::new()))
    }

    /// Punches out the file's pages, then swaps in a fresh file of the same
    /// name, size and kind: whoever kept the old fd reads zeros, and what
    /// they write lands in an inode no other VM will ever be given.
    fn destroy_content(&mut self, name: &Name) -> ServiceResult<()> {
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

    fn revoke(&mut self, session: &Session, vm: &VmSelector) -> ServiceResult<Response> {
        Self::require_admin(session, Request::Revoke)?;
        let lease = self.ledger.lease_of(vm)?;
        let uuid = self
            .ledger
            .lease(lease)
            .map(|l| l.vm.uuid)
            .unwrap_or_default();
        let reason = format!("revoked by {}", session.describe());
        let (bindings, mut released) = self.end_lease(lease, &reason).unwrap_or_default();
        let mut scrubbed = 0u32;
        // Deposited guest_memfds went with the lease itself (invariant 5).
        released.retain(|name| self.ledger.file(name).is_ok());
        for name in &released {
            match self.destroy_content(name) {
                Ok(()) => scrubbed += 1,
                Err(e) => warn!("revoke: destroying the content of {name} failed: {e}"),
            }
        }
        // Files the VM held without binding them keep their content but lose
        // the record of the revoked processes only after they exit.
        self.revoked.push(lease);
        info!(
            "revoked VM {uuid}: lease {lease}, {bindings} binding(s), {scrubbed} file(s) scrubbed"
        );
        Ok(Response::ok(
            RevokeReport {
                leases: 1,
                bindings: u32::try_from(bindings).unwrap_or(u32::MAX),
                scrubbed,
            }
            .encode(),
        ))
    }
}

/// The fd a client receives for a memory file (see [`memory::reopen`]).
fn client_fd(own: &OwnedFd, name: &Name, kind: MemoryKind) -> ServiceResult<OwnedFd> {
    memory::reopen(own, kind).map_err(|source| ServiceError::DupFd {
        name: name.clone(),
        source,
    })
}

fn join(names: &[Name]) -> String {
    names
        .iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
