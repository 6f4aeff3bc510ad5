//! Requests on a VM's lease: HELLO opens it, BIND and UNBIND record its
//! memslots, HANDOFF names the process holding it, REVOKE ends it from
//! outside; and what happens when it ends (invariants 4, 5 and 7).

use std::os::fd::{AsFd, OwnedFd};

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    BindRequest, HandoffReply, HandoffRequest, Hello, HelloReply, LeaseId, Request, RevokeReport,
    VmSelector, VERSION,
};
use log::{debug, info, warn};

use super::{join, Done, Service, ServiceError, ServiceResult, Session, SessionState};
use crate::ledger::{FileKey, Space};
use crate::peer;

impl Service {
    pub(super) fn hello(&mut self, session: &mut Session, hello: Hello) -> ServiceResult<Response> {
        let features = hello.features & super::SERVER_FEATURES;
        let lease = match hello.vm {
            None => {
                session.state = SessionState::Control { features };
                debug!("{} is a control session", self.describe(session));
                None
            }
            Some(vm) => {
                let id = self.next_lease;
                let new = self.ledger.vm(vm.uuid).is_none();
                self.ledger.open_lease(
                    id,
                    vm.clone(),
                    session.peer,
                    &session.principal,
                    &self.config.ties,
                    session.is_operator(),
                )?;
                self.next_lease = id.next();
                let tie = &self.ledger.vm(vm.uuid).expect("just leased").tie;
                info!(
                    "lease {id} opened: VM {vm}, pid {} ({}); {} {tie}",
                    session.peer.pid,
                    crate::principal::describe(&session.principal),
                    if new { "tied to" } else { "tie" },
                );
                session.state = SessionState::Lease { id, features };
                Some(id)
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

    pub(super) fn bind(&mut self, session: &Session, req: &BindRequest) -> ServiceResult<Response> {
        let lease = Self::require_lease(session, Request::Bind)?;
        let sets_owner = self.bind_over_recorded(lease, req)?;
        info!(
            "{}: bound slot {} gpa {:#x} -> {} +{:#x} size {:#x}{}",
            self.describe(session),
            req.slot,
            req.gpa.0,
            req.name,
            req.offset,
            req.size,
            if sets_owner { ", owner set" } else { "" }
        );
        Ok(Response::ok(Vec::new()))
    }

    pub(super) fn unbind(&mut self, session: &Session, slot: u32) -> ServiceResult<Response> {
        let lease = Self::require_lease(session, Request::Unbind)?;
        let (binding, cleared) = self.ledger.unbind(lease, slot)?;
        info!(
            "{}: unbound slot {slot} ({} +{:#x}){}",
            self.describe(session),
            binding.file,
            binding.offset,
            if cleared { ", owner cleared" } else { "" }
        );
        Ok(Response::ok(Vec::new()))
    }

    /// Records which process holds the lease's socket now (as its fd
    /// `req.fd`), once the kernel confirms it does: STATUS shows that
    /// process from then on.
    pub(super) fn handoff(
        &mut self,
        session: &Session,
        req: HandoffRequest,
        pidfd: &OwnedFd,
    ) -> ServiceResult<Response> {
        let lease = Self::require_lease(session, Request::Handoff)?;
        let pid = peer::pidfd_pid(pidfd.as_fd())
            .map_err(ServiceError::NotPidfd)?
            .ok_or_else(|| {
                ServiceError::NotPidfd(std::io::Error::from_raw_os_error(libc::ESRCH))
            })?;
        match peer::process_holds_peer(pidfd.as_fd(), req.fd, session.socket_inode) {
            Ok(true) => {}
            Ok(false) => return Err(ServiceError::NotLeaseHolder { pid, fd: req.fd }),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                return Err(ServiceError::NotPidfd(e))
            }
            Err(source) => return Err(ServiceError::HandoffUnverifiable { pid, source }),
        }
        let kept = pidfd.try_clone().map_err(ServiceError::NotPidfd)?;
        let before = self.lease_pid(lease, session.peer.pid);
        self.handoffs.insert(lease, (pid, kept));
        info!(
            "{}: now held by pid {pid} ({}), was pid {before}",
            self.describe(session),
            process_name(pid)
        );
        Ok(Response::ok(HandoffReply { pid }.encode()))
    }

    /// The process holding lease `id` now: the one it was last handed to
    /// while that lives, else the one that opened it (`peer_pid`).
    pub(super) fn lease_pid(&self, id: LeaseId, peer_pid: u32) -> u32 {
        match self.handoffs.get(&id) {
            Some((pid, fd)) if peer::pidfd_alive(fd) => *pid,
            _ => peer_pid,
        }
    }

    pub(super) fn revoke(&mut self, session: &Session, vm: &VmSelector) -> ServiceResult<Done> {
        Self::require_operator(session, Request::Revoke)?;
        let lease = self.ledger.lease_of(vm)?;
        let uuid = self.ledger.lease(lease)?.vm.uuid;
        let reason = format!("revoked by {}", self.describe(session));
        let (bindings, released) = self.end_lease_with(lease, &reason);
        let mut scrubbed = 0u32;
        for key in &released {
            match self.destroy_content(key) {
                Ok(()) => scrubbed += 1,
                Err(e) => warn!(
                    "revoke: destroying the content of {} failed: {e}",
                    self.ledger.label(key)
                ),
            }
        }
        info!(
            "revoked VM {uuid}: lease {lease}, {bindings} binding(s), {scrubbed} file(s) scrubbed"
        );
        Ok(Done {
            response: Response::ok(
                RevokeReport {
                    leases: 1,
                    bindings: u32::try_from(bindings).unwrap_or(u32::MAX),
                    scrubbed,
                }
                .encode(),
            ),
            ended: vec![lease],
            restart: false,
        })
    }

    /// Ends lease `id` (its connection closed, or it was revoked).
    pub(super) fn end_lease(&mut self, id: LeaseId, reason: &str) {
        self.detached.remove(&id);
        self.end_lease_with(id, reason);
    }

    /// Ends a lease: its bindings go at once (invariant 4), the guest_memfds
    /// its VM deposited are closed (invariant 5). Returns the number of
    /// bindings dropped and the files (still present) whose owner was cleared.
    fn end_lease_with(&mut self, id: LeaseId, reason: &str) -> (usize, Vec<FileKey>) {
        let Ok(end) = self.ledger.close_lease(id, self.now()) else {
            // Already ended (revoked before its connection closed).
            return (0, Vec::new());
        };
        for b in &end.bindings {
            info!(
                "lease {id} (VM {}): dropped binding slot {} gpa {:#x} {} +{:#x} size {:#x}",
                end.vm.name, b.slot, b.gpa.0, b.file, b.offset, b.size
            );
        }
        self.handoffs.remove(&id);
        // A deposited guest_memfd pins its VM in the kernel and serves that
        // VM only; with the lease gone nothing can bind it, so gmemd lets go
        // of it (invariant 5).
        let deposited: Vec<FileKey> = self
            .ledger
            .files_in(Space::Vm(end.vm.uuid))
            .filter(|(_, f)| f.depositor() == Some(id))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &deposited {
            match self.ledger.remove_file(key, false) {
                Ok(_) => {
                    self.memfiles.remove(key);
                    info!(
                        "lease {id} (VM {}): closed guest_memfd {}, gmemd keeps no VM alive",
                        end.vm.name, key.name
                    );
                }
                // Only its own VM can bind it, and that VM's bindings just
                // went with the lease; anything else is a bug worth seeing.
                Err(e) => warn!("lease {id}: keeping guest_memfd {}: {e}", key.name),
            }
        }
        self.prune_holders();
        info!(
            "lease {id} ended ({reason}): VM {}, {} binding(s) dropped, owner cleared on [{}]",
            end.vm,
            end.bindings.len(),
            join(&end.released)
        );
        let released = end
            .released
            .into_iter()
            .map(|name| FileKey::vm(end.vm.uuid, name))
            .filter(|key| !deposited.contains(key))
            .collect();
        (end.bindings.len(), released)
    }
}

/// `comm` of a process, for the log.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}
