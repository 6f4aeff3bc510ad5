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
//! `files` (CREATE, OPEN, DEPOSIT, DESTROY, SCRUB), `holders` (invariant 6),
//! `status` (STATUS pages).

mod error;
mod files;
mod holders;
mod leases;
mod session;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use gmem_protocol::conn::Frame;
use gmem_protocol::server::{decode_request, encode_reply, OutgoingReply, Response};
use gmem_protocol::wire::{Features, LeaseId, Name, Request, RequestBody, VmId};
use log::{debug, warn};

pub use error::ServiceError;
pub(crate) use error::ServiceResult;
use session::SessionState;
pub use session::{Session, SessionId};

use crate::config::{Admission, Config};
use crate::ledger::{Ledger, Peer};

/// The memory files and their ledger.
#[derive(Debug)]
pub struct Service {
    config: Config,
    ledger: Ledger,
    fds: BTreeMap<Name, OwnedFd>,
    /// pidfds of processes that received a memory fd (invariant 6).
    pidfds: HashMap<u32, OwnedFd>,
    /// The process each lease was handed to (HANDOFF), with its pidfd.
    handoffs: HashMap<LeaseId, (u32, OwnedFd)>,
    next_lease: LeaseId,
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
}

/// A successful request: its reply and the leases it ended.
#[derive(Debug)]
struct Done {
    response: Response,
    ended: Vec<LeaseId>,
}

impl From<Response> for Done {
    fn from(response: Response) -> Self {
        Done {
            response,
            ended: Vec::new(),
        }
    }
}

impl Service {
    /// A service with no files.
    pub fn new(config: Config) -> Self {
        Service {
            config,
            ledger: Ledger::new(),
            fds: BTreeMap::new(),
            pidfds: HashMap::new(),
            handoffs: HashMap::new(),
            next_lease: LeaseId::FIRST,
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

    /// Starts a session for a new connection whose end in gmemd has inode
    /// `socket_inode`. What the peer may do is decided here, once.
    pub fn open_session(&self, id: SessionId, peer: Peer, socket_inode: u64) -> Session {
        let admission = self.config.admission(peer.uid);
        debug!(
            "connection {id} from pid {} uid {}: {admission:?}",
            peer.pid, peer.uid
        );
        Session {
            id,
            peer,
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
    }

    /// Serves one frame of `session`: the daemon's only request path.
    pub fn serve(&mut self, session: &mut Session, frame: Frame) -> Served {
        let code = frame.header.code;
        let result = self.admit(session).and_then(|()| {
            let request = decode_request(frame)?;
            self.dispatch(session, request.body, request.fds)
        });
        let (response, close, ended) = match result {
            Ok(done) => (done.response, false, done.ended),
            Err(err) => {
                let request = Request::try_from(code)
                    .map_or_else(|_| format!("request code {code}"), |r| r.to_string());
                warn!("refused {request} from {}: {err}", self.describe(session));
                let response = Response::error(err.errno(), &err.to_string());
                (response, err.should_close(), Vec::new())
            }
        };
        Served {
            reply: encode_reply(code, response),
            close,
            ended,
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
            RequestBody::Open(name) => self.open(session, &name)?.into(),
            RequestBody::Bind(bind) => self.bind(session, &bind)?.into(),
            RequestBody::Unbind { slot } => self.unbind(session, slot)?.into(),
            RequestBody::Deposit(deposit) => self.deposit(session, &deposit, fd())?.into(),
            RequestBody::Destroy(name) => self.destroy(session, &name)?.into(),
            RequestBody::Status(query) => self.status(query).into(),
            RequestBody::Revoke(vm) => self.revoke(session, &vm)?,
            RequestBody::Scrub(name) => self.scrub(session, &name)?.into(),
            RequestBody::Handoff(handoff) => self.handoff(session, handoff, &fd())?.into(),
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
