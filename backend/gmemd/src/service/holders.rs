//! Who received a file's fd, and whether they live: accounting only. No
//! VM's data rests on this (a file's inode only ever serves its own VM);
//! it decides how long memory gmemd let go of still counts against its
//! principal (`ledger::retired`). Processes are watched by pidfd, so a
//! recycled pid is never mistaken for the one that got the fd.

use log::debug;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use super::{Service, ServiceError, ServiceResult, Session};
use crate::ledger::FileKey;
use crate::peer::pidfd_alive;

impl Service {
    /// Starts watching the session's process before it is handed an fd.
    /// The table is bounded (by `--max-connections`): a client that forks
    /// endlessly to collect fds is refused rather than growing gmemd.
    ///
    /// # Errors
    /// [`ServiceError::TooManyHolders`].
    pub(super) fn track_holder(&mut self, session: &Session) -> ServiceResult<()> {
        if session.lease().is_none() {
            return Ok(());
        }
        let pid = session.peer.pid;
        // pid 0: the peer lives in a pid namespace gmemd cannot see into;
        // its holdings last as long as its lease (see `record_holder`).
        let Some(raw) = Pid::from_raw(i32::try_from(pid).unwrap_or(0)) else {
            return Ok(());
        };
        if self.pidfds.get(&pid).is_some_and(pidfd_alive) {
            return Ok(());
        }
        let limit = self.config.limits.max_connections;
        if self.pidfds.len() >= limit {
            self.prune_holders();
            if self.pidfds.len() >= limit {
                return Err(ServiceError::TooManyHolders { pid, limit });
            }
        }
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => {
                self.pidfds.insert(pid, fd);
            }
            // Gone already; its lease still counts.
            Err(e) => debug!("pid {pid} gone before it could be tracked: {e}"),
        }
        Ok(())
    }

    /// Records that the session's process received `key`, through its
    /// lease. Control sessions (operators) are not charged.
    pub(super) fn record_holder(&mut self, session: &Session, key: &FileKey) {
        let Some(lease) = session.lease() else {
            return;
        };
        // The file was just checked to exist.
        let _ = self.ledger.add_holder(key, session.peer.pid, Some(lease));
    }

    /// Forgets processes that have exited, in the pidfd table, the ledger
    /// and retired memory.
    pub(super) fn prune_holders(&mut self) {
        self.pidfds.retain(|_, fd| pidfd_alive(fd));
        let alive = &self.pidfds;
        // Pid 0 is never seen to exit: it counts while its lease is open.
        self.ledger
            .prune_holders(&mut |pid| pid != 0 && alive.contains_key(&pid));
    }
}
