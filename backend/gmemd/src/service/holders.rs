//! Invariant 6: which processes received a file, and whether they live.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use gmem_protocol::wire::{Name, Uuid};
use log::debug;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use super::{Service, ServiceResult, Session};

impl Service {
    /// Refuses access to `name` for VM `uuid` while another VM owns it or a
    /// live process holds it for another VM (invariants 1 and 6).
    pub(super) fn check_access(
        &self,
        session: &Session,
        name: &Name,
        uuid: Uuid,
    ) -> ServiceResult<()> {
        let pidfds = &self.pidfds;
        self.ledger
            .check_access(name, uuid, session.peer.pid, &mut |pid| {
                pid_alive(pidfds, pid)
            })?;
        Ok(())
    }

    /// Records that the session's process received `name` for the
    /// session's VM, through its lease. Control sessions are not recorded.
    pub(super) fn record_holder(&mut self, session: &Session, name: &Name) {
        let (Some(lease), Some(vm)) = (session.lease(), self.vm_of(session).map(|v| v.uuid)) else {
            return;
        };
        let pid = session.peer.pid;
        // pid 0: the peer lives in a pid namespace gmemd cannot see into, so
        // its exit cannot be observed. It is recorded anyway and counts as
        // alive until a scrub (see `pid_alive`): the safe side of invariant 6.
        if let Some(raw) = Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            if !pid_alive(&self.pidfds, pid) {
                match pidfd_open(raw, PidfdFlags::empty()) {
                    Ok(fd) => {
                        self.pidfds.insert(pid, fd);
                    }
                    // Gone already; its lease still counts.
                    Err(e) => debug!("pid {pid} gone before it could be tracked: {e}"),
                }
            }
        }
        // The file was just checked to exist.
        let _ = self.ledger.add_holder(name, pid, vm, Some(lease));
    }

    /// Forgets processes that have exited, in the pidfd table and the
    /// ledger. Run when a lease ends, so the tables stay as small as the set
    /// of live VMM processes.
    pub(super) fn prune_holders(&mut self) {
        self.pidfds.retain(|_, fd| pidfd_alive(fd));
        let alive = &self.pidfds;
        self.ledger
            .prune_holders(&mut |pid| pid == 0 || alive.contains_key(&pid));
    }
}

/// Whether the process of a pidfd is still running (its pidfd turns
/// readable on exit, so pid reuse cannot fool this).
pub(super) fn pidfd_alive(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(
        poll(&mut fds, Some(&rustix::event::Timespec::default())),
        Ok(0)
    )
}

/// Whether a recorded holder may still reach its file. Pid 0 (a peer in an
/// unseen pid namespace) can't be watched, so it never counts as gone.
pub(super) fn pid_alive(pidfds: &HashMap<u32, OwnedFd>, pid: u32) -> bool {
    pid == 0 || pidfds.get(&pid).is_some_and(pidfd_alive)
}
