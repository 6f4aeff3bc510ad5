//! One connection's standing: its peer and principal (read from the kernel
//! at accept), what it may do, its handshake and its lease id. The VM
//! behind a lease lives in the ledger alone.

use gmem_protocol::wire::{Features, LeaseId};

use crate::config::Admission;
use crate::ledger::Peer;
use crate::principal::Principal;

/// Connection identifier assigned by the event loop.
pub type SessionId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionState {
    AwaitingHello,
    Control {
        features: Features,
    },
    Lease {
        id: LeaseId,
        features: Features,
    },
    /// The lease was revoked; what is still in flight is answered, not served.
    Revoked {
        id: LeaseId,
    },
}

/// One connection's standing with the daemon.
#[derive(Debug)]
pub struct Session {
    /// Connection id.
    pub id: SessionId,
    /// SO_PEERCRED of the peer.
    pub peer: Peer,
    /// Who the peer is, as the kernel said at accept.
    pub principal: Principal,
    /// Inode of gmemd's end of the connection (to find the client's end).
    pub(super) socket_inode: u64,
    pub(super) admission: Admission,
    pub(super) state: SessionState,
}

impl Session {
    /// A session as the journal describes it (after a gmemd restart).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restore(
        id: SessionId,
        peer: Peer,
        principal: Principal,
        socket_inode: u64,
        admission: Admission,
        state: u8,
        features: Features,
        lease: Option<LeaseId>,
    ) -> Self {
        let state = match (state, lease) {
            (1, _) => SessionState::Control { features },
            (2, Some(id)) => SessionState::Lease { id, features },
            (2 | 3, _) => SessionState::Revoked {
                id: id_or_first(lease),
            },
            _ => SessionState::AwaitingHello,
        };
        Session {
            id,
            peer,
            principal,
            socket_inode,
            admission,
            state,
        }
    }

    /// The standing as the journal keeps it: state code, features, lease.
    pub(super) fn journal_state(&self) -> (u8, u64, Option<u64>) {
        match self.state {
            SessionState::AwaitingHello => (0, 0, None),
            SessionState::Control { features } => (1, features.bits(), None),
            SessionState::Lease { id, features } => (2, features.bits(), Some(id.get())),
            SessionState::Revoked { id } => (3, 0, Some(id.get())),
        }
    }

    /// The lease this session holds, if it opened one and it was not revoked.
    pub fn lease(&self) -> Option<LeaseId> {
        match self.state {
            SessionState::Lease { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Marks the session's lease revoked: it is served nothing more, and
    /// its requests still in flight are answered `ECONNABORTED`.
    pub fn revoke(&mut self) {
        if let SessionState::Lease { id, .. } = self.state {
            self.state = SessionState::Revoked { id };
        }
    }

    /// Whether the handshake is still to come.
    pub fn awaiting_hello(&self) -> bool {
        self.state == SessionState::AwaitingHello
    }

    /// Whether the peer is an operator.
    pub fn is_operator(&self) -> bool {
        self.admission == Admission::Operator
    }

    pub(super) fn features(&self) -> Features {
        match self.state {
            SessionState::AwaitingHello | SessionState::Revoked { .. } => Features::empty(),
            SessionState::Control { features } | SessionState::Lease { features, .. } => features,
        }
    }
}

fn id_or_first(lease: Option<LeaseId>) -> LeaseId {
    lease.unwrap_or(LeaseId::FIRST)
}
