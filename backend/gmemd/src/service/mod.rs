//! The daemon's policy: applies requests to the ledger, owns the memory
//! fds, and decides who may do what.
//!
//! No sockets here: the event loop hands each frame in with the session it
//! came from ([`Service::serve`]) and sends back what it returns. That is
//! the one request path: admission, syntax, handshake and features are
//! checked there once, every refusal is a [`ServiceError`] turned into a
//! reply and logged there once.
//!
//! By concept: `session` (a connection's standing), `error` (refusals),
//! `leases` (HELLO, BIND, UNBIND, HANDOFF, REVOKE and a lease's end),
//! `files` (CREATE, OPEN, DEPOSIT, DESTROY, SCRUB), `scope` (which
//! namespace a name means, and what a session may see), `transfer`
//! (TRANSFER and FORGET: memory between namespaces), `quota` (limits and
//! per-principal quotas), `holders` (who received a file, for accounting),
//! `upkeep` (the periodic work: orphans, retired memory), `status` (STATUS
//! pages), `warm` (prefault and the warm pools).

mod devices;
pub use devices::DeviceStarter;
mod error;
mod files;
mod holders;
mod leases;
mod memfiles;
pub mod persist;
mod quota;
mod scope;
mod session;
mod status;
#[cfg(test)]
mod tests;
mod transfer;
mod upkeep;
mod warm;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{BorrowedFd, OwnedFd};

use gmem_protocol::conn::Frame;
use gmem_protocol::server::{decode_request, encode_reply, OutgoingReply, Response};
use gmem_protocol::wire::{Features, LeaseId, Name, Request, RequestBody, VmId};
use log::debug;

pub use error::ServiceError;
pub(crate) use error::ServiceResult;
use session::SessionState;
pub use session::{Session, SessionId};

use crate::config::{Admission, Config};
use crate::ledger::{Ledger, Peer};
use crate::principal::Principal;

/// gmemd's history, for STATUS and the log.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// When this state was first made (UNIX seconds).
    pub born: u64,
    /// When this process started serving (UNIX seconds).
    pub started: u64,
    /// How many times gmemd came back with its state.
    pub restarts: u64,
    /// What the last recovery brought back.
    pub recovered: String,
}

/// The memory files and their ledger.
#[derive(Debug)]
pub struct Service {
    config: Config,
    ledger: Ledger,
    memfiles: memfiles::MemFiles,
    /// The journal and the fd keeper, when gmemd keeps its state.
    persistence: Option<persist::Persistence>,
    /// Every connection's standing, as journaled.
    sessions: BTreeMap<u64, crate::journal::record::SessionRec>,
    /// Leases recovered without their connection, with when that was
    /// found: they end after the grace period.
    detached: BTreeMap<LeaseId, u64>,
    history: History,
    /// pidfds of processes that received a memory fd (accounting).
    pidfds: HashMap<u32, OwnedFd>,
    /// The process each lease was handed to (HANDOFF), with its pidfd.
    handoffs: HashMap<LeaseId, (u32, OwnedFd)>,
    next_lease: LeaseId,
    /// Tests move the clock forward by this many seconds.
    clock_offset: u64,
    log_limiter: crate::log_limit::LogLimiter,
    /// The VMs' vhost-user devices and their memory tables.
    devices: devices::Devices,
    /// Workers populating files CREATEd with `PREFAULT`.
    prefaulter: crate::prefault::Prefaulter,
    /// Files CREATEd with `PREFAULT`, by key, with the id of the inode
    /// being populated.
    prefaults: BTreeMap<crate::ledger::FileKey, warm::Prefault>,
    /// The warm pools.
    pool: crate::pool::Pool,
}

const SERVER_FEATURES: Features = Features::all();

/// What serving one frame produced.
#[derive(Debug)]
pub struct Served {
    /// The reply to queue.
    pub reply: OutgoingReply,
    /// Close the connection once the reply is sent.
    pub close: bool,
    /// Leases this request ended (REVOKE): their connections are closed,
    /// what they still have in flight answered `ECONNABORTED`.
    pub ended: Vec<LeaseId>,
    /// Restart in place once the reply is sent (RESTART).
    pub restart: bool,
}

/// A successful request: its reply, the leases it ended, and whether
/// gmemd restarts in place once the reply is out.
#[derive(Debug)]
struct Done {
    response: Response,
    ended: Vec<LeaseId>,
    restart: bool,
}

impl From<Response> for Done {
    fn from(response: Response) -> Self {
        Done {
            response,
            ended: Vec::new(),
            restart: false,
        }
    }
}

impl Service {
    /// A service with no files.
    pub fn new(config: Config) -> Self {
        Service {
            ledger: Ledger::new(),
            memfiles: memfiles::MemFiles::with_next_fid(1),
            persistence: None,
            sessions: BTreeMap::new(),
            detached: BTreeMap::new(),
            history: History {
                started: unix_now(),
                born: unix_now(),
                ..History::default()
            },
            pidfds: HashMap::new(),
            handoffs: HashMap::new(),
            next_lease: LeaseId::FIRST,
            clock_offset: 0,
            log_limiter: crate::log_limit::LogLimiter::new(),
            devices: devices::Devices::default(),
            prefaulter: crate::prefault::Prefaulter::new(config.warm.prefault_threads),
            prefaults: BTreeMap::new(),
            pool: crate::pool::Pool::new(config.warm.pools.clone(), config.warm.numa_node),
            config,
        }
    }

    /// Seconds on the service's clock: UNIX time, so ledger times mean
    /// the same after a restart.
    fn now(&self) -> u64 {
        unix_now() + self.clock_offset
    }

    /// Journals into `persistence` from now on (a fresh state).
    pub fn persist_with(&mut self, persistence: persist::Persistence) {
        self.persistence = Some(persistence);
        self.compact();
    }

    /// gmemd's history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The ledger, read-only.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Starts a session for a new connection whose end in gmemd has inode
    /// `socket_inode`. What the peer may do is decided here, once.
    pub fn open_session(
        &self,
        id: SessionId,
        peer: Peer,
        principal: Principal,
        socket_inode: u64,
    ) -> Session {
        let admission = self.config.admission(peer.uid);
        debug!(
            "connection {id} from pid {} ({}): {admission:?}",
            peer.pid,
            crate::principal::describe(&principal)
        );
        Session {
            id,
            peer,
            principal,
            socket_inode,
            admission,
            state: SessionState::AwaitingHello,
        }
    }

    /// Ends a session; if it held a lease, the lease ends with it.
    pub fn close_session(&mut self, session: &Session, reason: &str) {
        match session.lease() {
            Some(id) => self.end_lease(id, reason),
            None => debug!("{} closed: {reason}", self.describe(session)),
        }
        if self.sessions.contains_key(&session.id) {
            self.journal_session_gone(session.id);
        }
        self.persist();
    }

    /// Serves one frame of `session`, whose socket is `socket`: the
    /// daemon's only request path. What the request changed is journaled
    /// (and new fds kept) before this returns the reply.
    pub fn serve(
        &mut self,
        session: &mut Session,
        frame: Frame,
        socket: Option<BorrowedFd<'_>>,
    ) -> Served {
        let code = frame.header.code;
        let was_awaiting = session.awaiting_hello();
        self.tend_warm();
        let result = self.admit(session).and_then(|()| {
            let request = decode_request(frame)?;
            self.dispatch(session, request.body, request.fds)
        });
        let (response, close, ended, restart) = match result {
            Ok(done) => (done.response, false, done.ended, done.restart),
            Err(err) => {
                let request = Request::try_from(code)
                    .map_or_else(|_| format!("request code {code}"), |r| r.to_string());
                // A client can make gmemd refuse as often as it likes.
                let key = format!("refused {} {code} {}", session.peer.uid, err.errno());
                crate::log_limited!(
                    self.log_limiter,
                    key,
                    log::Level::Warn,
                    "refused {request} from {}: {err}",
                    self.describe(session)
                );
                let response = Response::error(err.errno(), &err.to_string());
                (response, err.should_close(), Vec::new(), false)
            }
        };
        // A connection is kept across gmemd restarts from its HELLO on.
        if was_awaiting && !session.awaiting_hello() {
            self.journal_session(session, socket);
        }
        self.persist();
        Served {
            reply: encode_reply(code, response),
            close,
            ended,
            restart,
        }
    }

    /// Refuses every message of a peer that may not talk to gmemd,
    /// well-formed or not, before anything else looks at it.
    fn admit(&self, session: &Session) -> ServiceResult<()> {
        match session.admission {
            Admission::Refused => Err(ServiceError::NotAllowed {
                uid: session.peer.uid,
            }),
            Admission::Client | Admission::Operator => Ok(()),
        }
    }

    fn dispatch(
        &mut self,
        session: &mut Session,
        request: RequestBody,
        mut fds: Vec<OwnedFd>,
    ) -> ServiceResult<Done> {
        let code = request.request();
        match (session.state, &request) {
            (SessionState::Revoked { id }, _) => return Err(ServiceError::Revoked(id)),
            (SessionState::AwaitingHello, RequestBody::Hello(_)) => {}
            (SessionState::AwaitingHello, _) => return Err(ServiceError::NoHandshake(code)),
            (_, RequestBody::Hello(_)) => return Err(ServiceError::SecondHello),
            _ => {}
        }
        let needed = match code {
            Request::Deposit => Features::DEPOSIT,
            Request::Scrub => Features::SCRUB,
            Request::Revoke => Features::REVOKE,
            Request::Handoff => Features::HANDOFF,
            Request::Transfer | Request::Forget => Features::VM_SCOPE,
            Request::Restart => Features::RESTART,
            Request::Device => Features::DEVICE,
            _ => Features::empty(),
        };
        if !session.features().contains(needed) {
            return Err(ServiceError::FeatureOff(code));
        }
        // The fd counts were checked by `decode_request`.
        let mut fd = || fds.pop().expect("request carries its fd");
        Ok(match request {
            RequestBody::Hello(hello) => self.hello(session, hello)?.into(),
            RequestBody::Create(create) => self.create(session, &create)?.into(),
            RequestBody::Open(file) => self.open(session, &file)?.into(),
            RequestBody::Bind(bind) => self.bind(session, &bind)?.into(),
            RequestBody::Unbind { slot } => self.unbind(session, slot)?.into(),
            RequestBody::Deposit(deposit) => self.deposit(session, &deposit, fd())?.into(),
            RequestBody::Destroy(file) => self.destroy(session, &file)?.into(),
            RequestBody::Status(query) => self.status(session, query)?.into(),
            RequestBody::Revoke(vm) => self.revoke(session, &vm)?,
            RequestBody::Scrub(file) => self.scrub(session, &file)?.into(),
            RequestBody::Handoff(handoff) => self.handoff(session, handoff, &fd())?.into(),
            RequestBody::Transfer(transfer) => self.transfer(session, &transfer)?.into(),
            RequestBody::Forget(vm) => self.forget(session, &vm)?.into(),
            RequestBody::Restart => {
                Self::require_operator(session, Request::Restart)?;
                log::info!("restart in place asked by {}", self.describe(session));
                Done {
                    response: Response::ok(Vec::new()),
                    ended: Vec::new(),
                    restart: true,
                }
            }
            RequestBody::Device(device) => self.device(session, &device)?,
        })
    }

    /// The VM of the session's lease (`None` for a control session).
    fn vm_of(&self, session: &Session) -> Option<&VmId> {
        session
            .lease()
            .and_then(|id| self.ledger.lease(id).ok())
            .map(|l| &l.vm)
    }

    fn require_lease(session: &Session, code: Request) -> ServiceResult<LeaseId> {
        session.lease().ok_or(ServiceError::NeedsLease(code))
    }

    fn require_operator(session: &Session, request: Request) -> ServiceResult<()> {
        if session.is_operator() {
            Ok(())
        } else {
            Err(ServiceError::NotOperator {
                request,
                uid: session.peer.uid,
            })
        }
    }

    /// Who a session is, for the log.
    fn describe(&self, session: &Session) -> String {
        match (session.state, self.vm_of(session)) {
            (SessionState::Lease { id, .. }, Some(vm)) => {
                format!("lease {id} (VM {}, pid {})", vm.name, session.peer.pid)
            }
            (SessionState::Revoked { id }, _) => format!(
                "revoked lease {id} (pid {}, uid {})",
                session.peer.pid, session.peer.uid
            ),
            _ => format!(
                "session {} (pid {}, uid {})",
                session.id, session.peer.pid, session.peer.uid
            ),
        }
    }
}

fn join(names: &[Name]) -> String {
    names
        .iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A clock for the ledger's times that tests can set.
#[cfg(test)]
impl Service {
    fn advance_clock(&mut self, secs: u64) {
        self.clock_offset += secs;
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
