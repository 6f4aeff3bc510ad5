//! Keeping what gmemd knows beyond its process: every change is written to
//! the journal, and every new memory fd and connection given to the fd
//! keeper (systemd's fd store, or gmemd's own keeper), before the reply
//! that reports it goes out. `recover` rebuilds the service from them.

mod convert;
mod recover;

use std::collections::BTreeSet;
use std::io;
use std::os::fd::BorrowedFd;

use log::{error, warn};

pub use recover::{Recovery, ResumedSession};

use super::{Service, Session};
use crate::journal::record::{LeaseRec, Meta, Record, SessionRec};
use crate::journal::Journal;
use crate::ledger::Change;

/// Where gmemd keeps fds that must outlive its process: systemd's file
/// descriptor store, or gmemd's keeper (see `fdstore`).
pub trait FdKeeper: std::fmt::Debug {
    /// Keeps `fd` under `name` (replacing one of that name).
    ///
    /// # Errors
    /// The keeper did not take it.
    fn keep(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()>;

    /// Lets go of the fd named `name`.
    ///
    /// # Errors
    /// The keeper could not be told.
    fn release(&mut self, name: &str) -> io::Result<()>;

    /// Tells the keeper gmemd serves (`READY=1`), with a status line.
    ///
    /// # Errors
    /// The keeper could not be told.
    fn ready(&mut self, _status: &str) -> io::Result<()> {
        Ok(())
    }

    /// A status line for the keeper (`STATUS=`).
    ///
    /// # Errors
    /// The keeper could not be told.
    fn status(&mut self, _status: &str) -> io::Result<()> {
        Ok(())
    }

    /// Tells the keeper gmemd is alive (`WATCHDOG=1`).
    ///
    /// # Errors
    /// The keeper could not be told.
    fn watchdog(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FdKeeper for crate::fdstore::FdStore {
    fn keep(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.store(name, fd)
    }

    fn release(&mut self, name: &str) -> io::Result<()> {
        self.remove(name)
    }

    fn ready(&mut self, status: &str) -> io::Result<()> {
        crate::fdstore::FdStore::ready(self, status)
    }

    fn status(&mut self, status: &str) -> io::Result<()> {
        crate::fdstore::FdStore::status(self, status)
    }

    fn watchdog(&mut self) -> io::Result<()> {
        crate::fdstore::FdStore::watchdog(self)
    }
}

/// The journal and the fd keeper of a service.
#[derive(Debug)]
pub struct Persistence {
    journal: Journal,
    keeper: Option<Box<dyn FdKeeper>>,
    /// Records not made from ledger changes (sessions, devices), waiting
    /// for the next write.
    pending: Vec<Record>,
    meta: Meta,
    written_meta: Option<Meta>,
}

impl Persistence {
    /// Journals into `journal`; keeps fds with `keeper`.
    pub fn new(journal: Journal, keeper: Option<Box<dyn FdKeeper>>, meta: Meta) -> Self {
        Persistence {
            journal,
            keeper,
            pending: Vec::new(),
            meta,
            written_meta: None,
        }
    }
}

/// Fd names: memory files `f<id>`, connections `c<id>`.
pub fn file_fd_name(fid: u64) -> String {
    format!("f{fid}")
}

/// The fd name of connection `sid`.
pub fn conn_fd_name(sid: u64) -> String {
    format!("c{sid}")
}

impl Service {
    /// Journals everything changed since the last call, taking the fds of
    /// files gone back from the keeper first and handing it new fds after
    /// their records are written. Called before a reply goes out.
    ///
    /// The keeper never holds memory the journal does not describe: a new
    /// file's record comes before its fd, and a gone file's fd goes before
    /// its record. gmemd killed in between leaves a record without its
    /// memory (reported at recovery; the request was never answered, and a
    /// client sends it again). A failed journal write still keeps the fd:
    /// the memory then comes back as an operators' `recovered.f<id>`.
    pub(crate) fn persist(&mut self) {
        let changes = self.ledger.take_changes();
        let (added, gone) = self.memfiles.take_events();
        let Some(p) = self.persistence.as_mut() else {
            return;
        };
        if let Some(keeper) = p.keeper.as_mut() {
            for fid in &gone {
                if let Err(e) = keeper.release(&file_fd_name(*fid)) {
                    warn!("the fd keeper did not let go of f{fid}: {e}");
                }
            }
        }
        let mut records: Vec<Record> = gone
            .iter()
            .map(|fid| Record::FileGone { fid: *fid })
            .collect();
        records.extend(self.change_records(changes));
        let p = self.persistence.as_mut().expect("checked above");
        records.append(&mut p.pending);
        p.meta.next_lease = self.next_lease.get();
        p.meta.next_fid = self.memfiles.next_fid();
        if p.written_meta.as_ref() != Some(&p.meta) {
            records.push(Record::Meta(p.meta.clone()));
            p.written_meta = Some(p.meta.clone());
        }
        if let Err(e) = p.journal.append(&records) {
            error!("journal write failed: {e}; the last change will not survive a gmemd restart");
        }
        if let Some(keeper) = p.keeper.as_mut() {
            for fid in &added {
                // Made and gone since the last call: nothing to keep.
                if let Some(fd) = self.memfiles.by_fid(*fid) {
                    if let Err(e) = keeper.keep(&file_fd_name(*fid), std::os::fd::AsFd::as_fd(fd)) {
                        error!("the fd keeper did not take memory file f{fid}: {e}; it will not survive a gmemd restart");
                    }
                }
            }
        }
        if p.journal.wants_compaction() {
            self.compact();
        }
    }

    /// Folds the journal into a snapshot of the whole state.
    pub(crate) fn compact(&mut self) {
        let records = self.all_records();
        if let Some(p) = self.persistence.as_mut() {
            if let Err(e) = p.journal.compact(&records) {
                error!("journal compaction failed: {e}; going on with the old journal");
            }
        }
    }

    fn change_records(&self, changes: BTreeSet<Change>) -> Vec<Record> {
        changes
            .into_iter()
            .filter_map(|change| match change {
                Change::File(key) => {
                    let file = self.ledger.file(&key).ok()?;
                    let fid = self.memfiles.fid(&key)?;
                    Some(Record::File(convert::file_rec(fid, &key, file)))
                }
                Change::Vm(uuid) => Some(match self.ledger.vm(uuid) {
                    Some(vm) => Record::Vm(convert::vm_rec(vm)),
                    None => Record::VmGone { uuid: uuid.0 },
                }),
                Change::Lease(id) => Some(match self.ledger.lease(id) {
                    Ok(l) => Record::Lease(self.lease_rec(id, l)),
                    Err(_) => Record::LeaseGone { id: id.get() },
                }),
                Change::Retired => Some(Record::Retired(
                    self.ledger
                        .retired()
                        .iter()
                        .map(convert::retired_rec)
                        .collect(),
                )),
            })
            .collect()
    }

    fn lease_rec(
        &self,
        id: gmem_protocol::wire::LeaseId,
        l: &crate::ledger::LeaseRecord,
    ) -> LeaseRec {
        convert::lease_rec(id, l, self.handoffs.get(&id).map(|(pid, _)| *pid))
    }

    /// The whole state as records: a snapshot.
    fn all_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some(p) = &self.persistence {
            let mut meta = p.meta.clone();
            meta.next_lease = self.next_lease.get();
            meta.next_fid = self.memfiles.next_fid();
            out.push(Record::Meta(meta));
        }
        out.extend(self.ledger.vms().map(|v| Record::Vm(convert::vm_rec(v))));
        for (key, fid, _) in self.memfiles.iter() {
            if let Ok(file) = self.ledger.file(key) {
                out.push(Record::File(convert::file_rec(fid, key, file)));
            }
        }
        out.extend(
            self.ledger
                .leases()
                .map(|(id, l)| Record::Lease(self.lease_rec(id, l))),
        );
        out.push(Record::Retired(
            self.ledger
                .retired()
                .iter()
                .map(convert::retired_rec)
                .collect(),
        ));
        out.extend(self.sessions.values().cloned().map(Record::Session));
        out.extend(self.devices.records());
        out.extend(self.pool_records());
        out
    }

    /// Journals `record` with the next write (a device's).
    pub(crate) fn journal_record(&mut self, record: Record) {
        if let Some(p) = self.persistence.as_mut() {
            p.pending.push(record);
        }
    }

    /// Journals a session's standing (and keeps its socket, if `fd`).
    pub(crate) fn journal_session(&mut self, session: &Session, fd: Option<BorrowedFd<'_>>) {
        let rec = session_rec(session);
        self.sessions.insert(rec.sid, rec.clone());
        let Some(p) = self.persistence.as_mut() else {
            return;
        };
        if let (Some(fd), Some(keeper)) = (fd, p.keeper.as_mut()) {
            if let Err(e) = keeper.keep(&conn_fd_name(session.id), fd) {
                error!(
                    "the fd keeper did not take connection {}: {e}; it will not survive a gmemd \
                     restart",
                    session.id
                );
            }
        }
        p.meta.next_sid = p.meta.next_sid.max(session.id + 1);
        p.pending.push(Record::Session(rec));
    }

    /// Journals that a session ended, and lets go of its socket.
    pub(crate) fn journal_session_gone(&mut self, sid: u64) {
        self.sessions.remove(&sid);
        let Some(p) = self.persistence.as_mut() else {
            return;
        };
        if let Some(keeper) = p.keeper.as_mut() {
            if let Err(e) = keeper.release(&conn_fd_name(sid)) {
                warn!("the fd keeper did not let go of connection {sid}: {e}");
            }
        }
        p.pending.push(Record::SessionGone { sid });
    }
}

impl Service {
    /// Whether an fd keeper holds gmemd's fds (systemd or gmemd's keeper).
    pub fn has_keeper(&self) -> bool {
        self.persistence
            .as_ref()
            .is_some_and(|p| p.keeper.is_some())
    }

    /// Gives `fd` to the fd keeper under `name`, if there is one.
    pub fn keep_fd(&mut self, name: &str, fd: BorrowedFd<'_>) {
        if let Some(k) = self.persistence.as_mut().and_then(|p| p.keeper.as_mut()) {
            if let Err(e) = k.keep(name, fd) {
                error!("the fd keeper did not take {name}: {e}");
            }
        }
    }

    /// Tells the fd keeper gmemd serves, with what it holds.
    pub fn notify_ready(&mut self) {
        let status = self.status_line();
        if let Some(k) = self.persistence.as_mut().and_then(|p| p.keeper.as_mut()) {
            if let Err(e) = k.ready(&status) {
                warn!("telling the fd keeper gmemd is ready: {e}");
            }
        }
    }

    /// Pings the keeper's watchdog and refreshes its status line.
    pub fn notify_alive(&mut self, with_status: bool) {
        let status = with_status.then(|| self.status_line());
        if let Some(k) = self.persistence.as_mut().and_then(|p| p.keeper.as_mut()) {
            let _ = k.watchdog();
            if let Some(s) = status {
                let _ = k.status(&s);
            }
        }
    }

    fn status_line(&self) -> String {
        format!(
            "{} file(s), {} lease(s), {} in files; {} restart(s){}",
            self.memfiles.len(),
            self.ledger.lease_count(),
            crate::size::format_size(self.ledger.total_size()),
            self.history.restarts,
            self.pool
                .summary()
                .map_or_else(String::new, |s| format!("; {s}"))
        )
    }

    /// Journals every connection's standing and folds the journal into a
    /// snapshot, then returns every fd a successor must get, named: the
    /// memory files. (Connections and the listener are the event loop's.)
    pub fn handover(&mut self, sessions: &[&Session]) -> Vec<(String, std::os::fd::RawFd)> {
        for s in sessions {
            self.journal_session(s, None);
        }
        self.persist();
        self.compact();
        self.memfiles
            .iter()
            .map(|(_, fid, fd)| (file_fd_name(fid), std::os::fd::AsRawFd::as_raw_fd(fd)))
            .chain(self.pool_fds())
            .collect()
    }
}

fn session_rec(s: &Session) -> SessionRec {
    let (state, features, lease) = s.journal_state();
    SessionRec {
        sid: s.id,
        pid: s.peer.pid,
        principal: convert::principal_rec(&s.principal),
        state,
        features,
        lease,
    }
}
