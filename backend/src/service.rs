//! The daemon's policy: applies decoded requests to the ledger, owns the
//! memory fds, and decides who may do what.
//!
//! No sockets here: the event loop hands each request in with the session it
//! came from and sends back the [`Response`]. Every refusal goes through
//! [`ServiceError`], which has one errno mapping and one close decision.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use gmem_protocol::server::{Handler, Response};
use gmem_protocol::wire::{
    encode_status_page, BindRequest, BindingStatus, CreateFlags, CreateRequest, DepositRequest,
    Features, FileInfo, FileStatus, Hello, HelloReply, LeaseStatus, MemoryKind, Name, OwnerStatus,
    Reply, Request, RequestBody, RevokeReport, StatusQuery, StatusSection, Uuid, VmId, VmSelector,
    VERSION,
};
use log::{debug, info, warn};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::config::{format_size, Config};
use crate::ledger::{FileSpec, LeaseId, Ledger, LedgerError, Peer};
use crate::memory::{self, MemoryError};

/// Refusals of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The peer's uid is not in the allowed list.
    #[error("uid {uid} is not allowed to use gmemd")]
    NotAllowed {
        /// Peer uid.
        uid: u32,
    },
    /// A request other than HELLO before the handshake.
    #[error("{0} before HELLO: the handshake comes first")]
    NoHandshake(Request),
    /// A second HELLO.
    #[error("HELLO on a session that already did its handshake")]
    SecondHello,
    /// The request needs a VM lease, the session is a control session.
    #[error("{0} needs a VM lease; control sessions cannot do it")]
    NeedsLease(Request),
    /// The request needs an operator uid.
    #[error("{request} is an operator request and uid {uid} is not an operator")]
    NotOperator {
        /// Request.
        request: Request,
        /// Peer uid.
        uid: u32,
    },
    /// The feature was not negotiated in HELLO.
    #[error("{0} needs a feature that was not negotiated in HELLO")]
    FeatureOff(Request),
    /// The total memory limit would be exceeded.
    #[error("memory limit reached: {used} in use + {requested} requested > {limit}")]
    MemoryLimit {
        /// Bytes in use (formatted).
        used: String,
        /// Bytes requested (formatted).
        requested: String,
        /// Limit (formatted).
        limit: String,
    },
    /// The per-lease file limit would be exceeded.
    #[error("file limit reached: this lease already has {limit} files")]
    FileLimit {
        /// The limit.
        limit: usize,
    },
    /// CREATE with OPEN_EXISTING found a different file of that name.
    #[error("memory file {name} exists as {kind}, {size} bytes; not what was asked")]
    ExistsDifferently {
        /// Name.
        name: Name,
        /// Existing kind.
        kind: MemoryKind,
        /// Existing size.
        size: u64,
    },
    /// guest_memfds are only for the VM that created them.
    #[error("memory file {0} is a guest_memfd: only its own VM uses it, it cannot be opened")]
    GuestMemfdClosed(Name),
    /// Scrubbing a file that is bound.
    #[error("memory file {name} is bound in {bindings} slot(s); unbind it before scrubbing")]
    ScrubBound {
        /// Name.
        name: Name,
        /// Bindings.
        bindings: usize,
    },
    /// Duplicating an fd for a reply failed.
    #[error("cannot duplicate the fd of {name}")]
    DupFd {
        /// Name.
        name: Name,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ledger refused.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Making or checking memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl ServiceError {
    /// The errno carried by the reply (PROTOCOL.md lists them).
    pub fn errno(&self) -> Errno {
        match self {
            Self::NotAllowed { .. } => Errno::ACCESS,
            Self::NoHandshake(_) | Self::SecondHello => Errno::PROTO,
            Self::NeedsLease(_) | Self::NotOperator { .. } | Self::GuestMemfdClosed(_) => {
                Errno::PERM
            }
            Self::FeatureOff(_) => Errno::OPNOTSUPP,
            Self::MemoryLimit { .. } => Errno::NOSPC,
            Self::FileLimit { .. } => Errno::MFILE,
            Self::ExistsDifferently { .. } => Errno::EXIST,
            Self::ScrubBound { .. } => Errno::BUSY,
            Self::DupFd { .. } => Errno::MFILE,
            Self::Ledger(e) => e.errno(),
            Self::Memory(e) => e.errno(),
        }
    }

    /// Whether the connection is closed after the reply: only for peers that
    /// may not talk to gmemd at all.
    pub fn should_close(&self) -> bool {
        matches!(self, Self::NotAllowed { .. })
    }
}

type ServiceResult<T> = Result<T, ServiceError>;

/// Connection identifier assigned by the event loop.
pub type SessionId = u64;

#[derive(Debug, Clone)]
enum SessionState {
    AwaitingHello,
    Control {
        features: Features,
    },
    Lease {
        id: LeaseId,
        vm: VmId,
        features: Features,
    },
}

/// One connection's standing with the daemon.
#[derive(Debug)]
pub struct Session {
    /// Connection id.
    pub id: SessionId,
    /// SO_PEERCRED of the peer.
    pub peer: Peer,
    allowed: bool,
    admin: bool,
    state: SessionState,
}

impl Session {
    /// The lease this session opened, if any.
    pub fn lease(&self) -> Option<LeaseId> {
        match self.state {
            SessionState::Lease { id, .. } => Some(id),
            _ => None,
        }
    }

    fn features(&self) -> Features {
        match self.state {
            SessionState::AwaitingHello => Features::empty(),
            SessionState::Control { features } | SessionState::Lease { features, .. } => features,
        }
    }

    fn vm(&self) -> Option<&VmId> {
        match &self.state {
            SessionState::Lease { vm, .. } => Some(vm),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match &self.state {
            SessionState::Lease { id, vm, .. } => {
                format!("lease {id} (VM {}, pid {})", vm.name, self.peer.pid)
            }
            _ => format!(
                "session {} (pid {}, uid {})",
                self.id, self.peer.pid, self.peer.uid
            ),
        }
    }
}

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

    /// The fd of a memory file.
    pub fn file_fd(&self, name: &Name) -> Option<&OwnedFd> {
        self.fds.get(name)
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
        self.reply_with_fd(session, &req.name, spec, true)
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
        debug!("opened {name} for {}", session.describe());
        self.reply_with_fd(session, name, spec, false)
    }

    /// Refuses access to `name` for VM `uuid` while another VM owns it or a
    /// live process holds it for another VM (invariants 1 and 6).
    fn check_access(&mut self, session: &Session, name: &Name, uuid: Uuid) -> ServiceResult<()> {
        let mut live_other = Self::live_other_holders(&self.pidfds, session);
        self.ledger.check_access(name, uuid, &mut live_other)?;
        Ok(())
    }

    /// Whether a recorded pid is a live process other than the requester.
    /// The requester itself is not a "process that had it for another VM"
    /// it could be shielded from: it already holds the fd. Only the holders
    /// of the file in question are polled.
    fn live_other_holders<'a>(
        pidfds: &'a HashMap<u32, OwnedFd>,
        session: &Session,
    ) -> impl FnMut(u32) -> bool + 'a {
        let requester = session.peer.pid;
        move |pid| (pid == 0 || pid != requester) && pid_alive(pidfds, pid)
    }

    fn reply_with_fd(
        &mut self,
        session: &Session,
        name: &Name,
        spec: FileSpec,
        created: bool,
    ) -> ServiceResult<Response> {
        let own = self.fds.get(name).expect("every ledger file has an fd");
        let fd = memory::reopen(own, spec.kind).map_err(|source| ServiceError::DupFd {
            name: name.clone(),
            source,
        })?;
        if let Some(vm) = session.vm() {
            self.record_holder(name, session.peer.pid, vm.uuid);
        }
        let info = FileInfo {
            size: spec.size,
            page_size: spec.page_size,
            kind: spec.kind,
            created,
        };
        Ok(Response::ok_with_fds(info.encode(), vec![fd]))
    }

    fn record_holder(&mut self, name: &Name, pid: u32, vm: Uuid) {
        // pid 0: the peer lives in a pid namespace gmemd cannot see into, so
        // its exit cannot be observed. It is recorded anyway and counts as
        // alive until a scrub (see `pid_alive`): the safe side of invariant 6.
        let Some(raw) = Pid::from_raw(i32::try_from(pid).unwrap_or(0)) else {
            let _ = self.ledger.add_holder(name, pid, vm);
            return;
        };
        if !self.is_alive(pid) {
            match pidfd_open(raw, PidfdFlags::empty()) {
                Ok(fd) => {
                    self.pidfds.insert(pid, fd);
                }
                Err(e) => {
                    debug!("pid {pid} gone before it could be tracked: {e}");
                    return;
                }
            }
        }
        let _ = self.ledger.add_holder(name, pid, vm);
    }

    /// Whether the process behind a recorded pid still runs; a pidfd turns
    /// readable when its process exits, so pid reuse cannot fool this.
    fn is_alive(&self, pid: u32) -> bool {
        pid_alive(&self.pidfds, pid)
    }

    /// Forgets processes that have exited, in the pidfd table and the
    /// ledger. Run when a lease ends, so the tables stay as small as the set
    /// of live VMM processes.
    fn prune_holders(&mut self) {
        self.pidfds.retain(|_, fd| pidfd_alive(fd));
        let alive = &self.pidfds;
        self.ledger
            .prune_holders(&mut |pid| pid == 0 || alive.contains_key(&pid));
    }

    fn bind(&mut self, session: &Session, req: &BindRequest) -> ServiceResult<Response> {
        let (lease, vm) = Self::require_lease(session, Request::Bind)?;
        let mut live_other = Self::live_other_holders(&self.pidfds, session);
        let sets_owner = self.ledger.bind(lease, req, &mut live_other)?;
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
            self.record_holder(&req.name, session.peer.pid, vm.uuid);
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
        let (bindings, released) = self.end_lease(lease, &reason).unwrap_or_default();
        let mut scrubbed = 0u32;
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

    fn status(&mut self, query: StatusQuery) -> Response {
        let start = query.start as usize;
        match query.section {
            StatusSection::Files => {
                let entries: Vec<FileStatus> = self
                    .ledger
                    .files()
                    .skip(start)
                    .map(|(name, f)| self.file_status(name, f))
                    .collect();
                let total = u32::try_from(self.ledger.files().count()).unwrap_or(u32::MAX);
                let (body, _) =
                    encode_status_page(total, query.start, &entries, FileStatus::encode);
                Response::ok(body)
            }
            StatusSection::Leases => {
                let entries: Vec<LeaseStatus> = self
                    .ledger
                    .leases()
                    .skip(start)
                    .map(|(id, l)| LeaseStatus {
                        lease: id,
                        vm: l.vm.clone(),
                        pid: l.peer.pid,
                        uid: l.peer.uid,
                        bindings: u32::try_from(l.bindings().count()).unwrap_or(u32::MAX),
                        files: u32::try_from(self.ledger.files_created_by(id)).unwrap_or(u32::MAX),
                    })
                    .collect();
                let total = u32::try_from(self.ledger.leases().count()).unwrap_or(u32::MAX);
                let (body, _) =
                    encode_status_page(total, query.start, &entries, LeaseStatus::encode);
                Response::ok(body)
            }
        }
    }

    fn file_status(&self, name: &Name, file: &crate::ledger::FileRecord) -> FileStatus {
        let owner = file.owner.as_ref().map(|o| OwnerStatus {
            vm: o.vm.clone(),
            lease: o.lease,
        });
        let bindings = file
            .owner
            .as_ref()
            .and_then(|o| self.ledger.lease(o.lease))
            .map(|l| {
                l.bindings()
                    .filter(|b| &b.file == name)
                    .map(|b| BindingStatus {
                        slot: b.slot,
                        gpa: b.gpa,
                        offset: b.offset,
                        size: b.size,
                    })
                    .collect()
            })
            .unwrap_or_default();
        FileStatus {
            name: name.clone(),
            size: file.spec.size,
            page_size: file.spec.page_size,
            kind: file.spec.kind,
            owner,
            bindings,
        }
    }
}

/// Whether the process of a pidfd is still running (its pidfd turns
/// readable on exit).
fn pidfd_alive(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(
        poll(&mut fds, Some(&rustix::event::Timespec::default())),
        Ok(0)
    )
}

/// Whether a recorded holder may still reach its file. Pid 0 (a peer in an
/// unseen pid namespace) can't be watched, so it never counts as gone.
fn pid_alive(pidfds: &HashMap<u32, OwnedFd>, pid: u32) -> bool {
    pid == 0 || pidfds.get(&pid).is_some_and(pidfd_alive)
}

fn join(names: &[Name]) -> String {
    names
        .iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The [`Handler`] for one connection: the service plus that connection's session.
#[derive(Debug)]
pub struct SessionHandler<'a> {
    /// The service.
    pub service: &'a mut Service,
    /// The session.
    pub session: &'a mut Session,
}

impl Handler for SessionHandler<'_> {
    fn admit(&mut self) -> Option<Response> {
        if self.session.allowed {
            return None;
        }
        let err = ServiceError::NotAllowed {
            uid: self.session.peer.uid,
        };
        warn!("refused {}: {err}", self.session.describe());
        let mut response = Response::error(err.errno(), &err.to_string());
        response.close = err.should_close();
        Some(response)
    }

    fn handle(&mut self, request: RequestBody, fds: Vec<OwnedFd>) -> Response {
        self.service.handle(self.session, request, fds)
    }

    fn refused(&mut self, code: u32, reply: &Reply) {
        let request =
            Request::try_from(code).map_or_else(|_| format!("code {code}"), |r| r.to_string());
        warn!(
            "refused {request} from {}: {}",
            self.session.describe(),
            reply.text
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_protocol::wire::Reply;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn service() -> Service {
        let mut config = Config {
            allowed_uids: vec![0, 1000, 2000],
            admin_uids: vec![0],
            ..Config::default()
        };
        config.limits.max_total_memory = 64 << 20;
        config.limits.max_files_per_lease = 2;
        Service::new(config)
    }

    fn call(svc: &mut Service, s: &mut Session, req: RequestBody) -> Result<Reply, Reply> {
        let resp = svc.handle(s, req, Vec::new());
        if resp.reply.status == 0 {
            Ok(resp.reply)
        } else {
            Err(resp.reply)
        }
    }

    fn vm_session(svc: &mut Service, id: u64, vm: &str, uid: u32) -> Session {
        let mut s = svc.open_session(id, Peer { pid: 0, uid });
        call(
            svc,
            &mut s,
            RequestBody::Hello(Hello {
                features: Features::all(),
                vm: Some(VmId::from_name(name(vm))),
            }),
        )
        .unwrap();
        s
    }

    fn create(size: u64) -> RequestBody {
        RequestBody::Create(CreateRequest {
            name: name("f"),
            size,
            kind: MemoryKind::Memfd,
            flags: CreateFlags::empty(),
        })
    }

    #[test]
    fn handshake_first_and_once() {
        let mut svc = service();
        let mut s = svc.open_session(1, Peer { pid: 0, uid: 0 });
        let err = call(&mut svc, &mut s, RequestBody::Open(name("x"))).unwrap_err();
        assert_eq!(err.status, -Errno::PROTO.raw_os_error());
        call(
            &mut svc,
            &mut s,
            RequestBody::Hello(Hello {
                features: Features::empty(),
                vm: None,
            }),
        )
        .unwrap();
        let again = RequestBody::Hello(Hello {
            features: Features::empty(),
            vm: None,
        });
        assert!(call(&mut svc, &mut s, again).is_err());
        // SCRUB was not negotiated.
        let err = call(&mut svc, &mut s, RequestBody::Scrub(name("x"))).unwrap_err();
        assert_eq!(err.status, -Errno::OPNOTSUPP.raw_os_error());
    }

    #[test]
    fn disallowed_uid_is_refused_and_closed() {
        let mut svc = service();
        let mut s = svc.open_session(1, Peer { pid: 0, uid: 4242 });
        let resp = svc.handle(
            &mut s,
            RequestBody::Hello(Hello {
                features: Features::empty(),
                vm: None,
            }),
            Vec::new(),
        );
        assert_eq!(resp.reply.status, -Errno::ACCESS.raw_os_error());
        assert!(resp.reply.text.contains("uid 4242"));
        assert!(resp.close);
    }

    #[test]
    fn limits_are_enforced() {
        let mut svc = service();
        let mut s = vm_session(&mut svc, 1, "a", 1000);
        let err = call(&mut svc, &mut s, create(128 << 20)).unwrap_err();
        assert_eq!(err.status, -Errno::NOSPC.raw_os_error());
        assert!(err.text.contains("memory limit"));
        for n in ["a1", "a2"] {
            let req = RequestBody::Create(CreateRequest {
                name: name(n),
                size: 4096,
                kind: MemoryKind::Memfd,
                flags: CreateFlags::empty(),
            });
            call(&mut svc, &mut s, req).unwrap();
        }
        let err = call(&mut svc, &mut s, create(4096)).unwrap_err();
        assert_eq!(err.status, -Errno::MFILE.raw_os_error());
    }

    #[test]
    fn operator_requests_need_an_admin() {
        let mut svc = service();
        let mut user = vm_session(&mut svc, 1, "a", 1000);
        let mut admin = vm_session(&mut svc, 2, "b", 0);
        let err = call(
            &mut svc,
            &mut user,
            RequestBody::Revoke(VmSelector::Name(name("b"))),
        )
        .unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
        let err = call(&mut svc, &mut user, RequestBody::Scrub(name("x"))).unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
        let report = call(
            &mut svc,
            &mut admin,
            RequestBody::Revoke(VmSelector::Name(name("a"))),
        )
        .unwrap();
        assert_eq!(RevokeReport::decode(&report.body).unwrap().leases, 1);
        assert_eq!(svc.take_revoked(), vec![user.lease().unwrap()]);
        // Its connection closing later finds nothing left to end.
        svc.close_session(&user, "closed");
    }

    #[test]
    fn disallowed_peers_are_cut_off_even_for_malformed_messages() {
        let mut svc = service();
        let mut s = svc.open_session(1, Peer { pid: 0, uid: 4242 });
        let mut handler = SessionHandler {
            service: &mut svc,
            session: &mut s,
        };
        let frame = gmem_protocol::conn::Frame {
            header: gmem_protocol::wire::Header {
                code: 999,
                is_reply: false,
                size: 0,
            },
            payload: Vec::new(),
            fds: Vec::new(),
        };
        let out = gmem_protocol::server::handle_frame(&mut handler, frame);
        assert!(out.close);
        assert_eq!(
            Reply::decode(&out.payload).unwrap().status,
            -Errno::ACCESS.raw_os_error()
        );
    }

    #[test]
    fn only_operators_destroy_what_another_lease_made() {
        let mut svc = service();
        let mut a = vm_session(&mut svc, 1, "a", 1000);
        let mut b = vm_session(&mut svc, 2, "b", 2000);
        call(&mut svc, &mut a, create(4096)).unwrap();
        let err = call(&mut svc, &mut b, RequestBody::Destroy(name("f"))).unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
        call(&mut svc, &mut a, RequestBody::Destroy(name("f"))).unwrap();
        // Once its lease is gone, the creator is an ordinary user again.
        call(&mut svc, &mut a, create(4096)).unwrap();
        svc.close_session(&a, "test");
        let mut a2 = vm_session(&mut svc, 3, "a", 1000);
        let err = call(&mut svc, &mut a2, RequestBody::Destroy(name("f"))).unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
        let mut root = vm_session(&mut svc, 4, "root", 0);
        call(&mut svc, &mut root, RequestBody::Destroy(name("f"))).unwrap();
    }

    #[test]
    fn a_refused_deposit_leaves_the_fd_alone() {
        let mut svc = service();
        let mut a = vm_session(&mut svc, 1, "a", 1000);
        let big = rustix::fs::memfd_create(
            "big",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&big, 128 << 20).unwrap();
        let request = RequestBody::Deposit(gmem_protocol::wire::DepositRequest {
            name: name("dep"),
            kind: MemoryKind::Memfd,
        });
        let dup = big.try_clone().unwrap();
        let resp = svc.handle(&mut a, request, vec![dup]);
        assert_eq!(resp.reply.status, -Errno::NOSPC.raw_os_error());
        assert!(rustix::fs::fcntl_get_seals(&big).unwrap().is_empty());
    }

    #[test]
    fn control_sessions_cannot_bind_and_non_admins_get_no_fds() {
        let mut svc = service();
        let mut ctl = svc.open_session(1, Peer { pid: 0, uid: 1000 });
        call(
            &mut svc,
            &mut ctl,
            RequestBody::Hello(Hello {
                features: Features::all(),
                vm: None,
            }),
        )
        .unwrap();
        let err = call(&mut svc, &mut ctl, create(4096)).unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
        let bind = RequestBody::Bind(BindRequest {
            slot: 0,
            gpa: 0,
            name: name("f"),
            offset: 0,
            size: 4096,
        });
        let err = call(&mut svc, &mut ctl, bind).unwrap_err();
        assert_eq!(err.status, -Errno::PERM.raw_os_error());
    }
}
