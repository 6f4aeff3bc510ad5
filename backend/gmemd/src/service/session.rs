//! One connection's standing: its peer, its handshake, its lease.

use std::os::fd::OwnedFd;

use gmem_protocol::server::{Handler, Response};
use gmem_protocol::wire::{Features, Reply, Request, RequestBody, VmId};
use log::warn;

use super::{Service, ServiceError};
use crate::ledger::{LeaseId, Peer};

/// Connection identifier assigned by the event loop.
pub type SessionId = u64;

#[derive(Debug, Clone)]
pub(super) enum SessionState {
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
    pub(super) allowed: bool,
    pub(super) admin: bool,
    pub(super) state: SessionState,
}

impl Session {
    /// The lease this session opened, if any.
    pub fn lease(&self) -> Option<LeaseId> {
        match self.state {
            SessionState::Lease { id, .. } => Some(id),
            _ => None,
        }
    }

    pub(super) fn features(&self) -> Features {
        match self.state {
            SessionState::AwaitingHello => Features::empty(),
            SessionState::Control { features } | SessionState::Lease { features, .. } => features,
        }
    }

    pub(super) fn vm(&self) -> Option<&VmId> {
        match &self.state {
            SessionState::Lease { vm, .. } => Some(vm),
            _ => None,
        }
    }

    pub(super) fn describe(&self) -> String {
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
