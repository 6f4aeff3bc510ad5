//! Rebuilding the service after gmemd's own crash, restart or upgrade:
//! the journal says what existed, the fd keeper hands back the memory fds
//! and connections. Whatever one has without the other is reported: a
//! file whose fd was not kept lost its memory; an fd the journal does not
//! describe belonged to a request that was never answered, and is closed.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use gmem_protocol::wire::{Features, LeaseId};
use log::{info, warn};

use super::{conn_fd_name, convert, file_fd_name, FdKeeper, Persistence};
use crate::config::Config;
use crate::journal::{Journal, Recovered};
use crate::ledger::{Ledger, LedgerParts, Peer};
use crate::service::{Service, Session};

/// A connection that survived, with its standing.
#[derive(Debug)]
pub struct ResumedSession {
    /// Its standing.
    pub session: Session,
    /// Its socket.
    pub stream: UnixStream,
}

/// What recovery gives the event loop.
#[derive(Debug)]
pub struct Recovery {
    /// The service, as it was.
    pub service: Service,
    /// The connections that survived.
    pub sessions: Vec<ResumedSession>,
    /// The next session id to give out.
    pub next_sid: u64,
    /// What was found, for the log and STATUS.
    pub notes: Vec<String>,
}

impl Service {
    /// Rebuilds the service from the journal's state and the kept fds
    /// (named `f<id>` and `c<id>`; others are returned in `notes` and
    /// closed). `took_over`: fds were handed over (a restart, not a start
    /// after a stop).
    pub fn recover(
        config: Config,
        journal: Journal,
        recovered: Recovered,
        fds: Vec<(String, OwnedFd)>,
        keeper: Option<Box<dyn FdKeeper>>,
        took_over: bool,
    ) -> Recovery {
        let mut notes = recovered.damage.clone();
        let state = recovered.state;
        let mut fds: HashMap<String, OwnedFd> = fds.into_iter().collect();
        // Leases keep their connection's socket or end after the grace.
        let attached: BTreeMap<u64, u64> = state
            .sessions
            .values()
            .filter(|s| fds.contains_key(&conn_fd_name(s.sid)))
            .filter_map(|s| Some((s.lease?, s.sid)))
            .collect();

        let mut parts = LedgerParts::default();
        for v in state.vms.values() {
            match convert::vm_id(v.uuid, &v.name) {
                Ok(vm) => parts.vms.push((vm, convert::tie(&v.tie), v.idle_since)),
                Err(e) => notes.push(format!("a VM record does not decode ({e}); left out")),
            }
        }
        let mut file_fds = Vec::new();
        for f in state.files.values() {
            let Some(fd) = fds.remove(&file_fd_name(f.fid)) else {
                notes.push(format!(
                    "memory file {} (f{}): its fd was not kept, so its memory is gone; left out",
                    f.name, f.fid
                ));
                continue;
            };
            match convert::file_part(f) {
                Ok(part) => {
                    file_fds.push((part.key.clone(), f.fid, fd));
                    parts.files.push(part);
                }
                Err(e) => notes.push(format!("memory file f{}: {e}; closed", f.fid)),
            }
        }
        let mut handoffs = Vec::new();
        for l in state.leases.values() {
            let (Some(id), Ok(vm), Ok(bindings)) = (
                LeaseId::new(l.id),
                convert::vm_id(l.uuid, &l.name),
                convert::bindings(l),
            ) else {
                notes.push(format!(
                    "lease {}: its record does not decode; left out",
                    l.id
                ));
                continue;
            };
            if let Some(pid) = l.handoff {
                handoffs.push((id, pid));
            }
            parts.leases.push((
                id,
                vm,
                Peer {
                    pid: l.pid,
                    uid: l.uid,
                },
                bindings,
            ));
        }
        parts.retired = state.retired.iter().map(convert::retired).collect();
        parts.now = crate::service::unix_now();
        let (ledger, restored) = Ledger::restore(parts);
        notes.extend(restored.notes);

        let mut service = Service::new(config);
        service.ledger = ledger;
        service.memfiles = crate::service::memfiles::MemFiles::with_next_fid(state.meta.next_fid);
        for (key, fid, fd) in file_fds {
            let key = restored
                .moved
                .iter()
                .find(|(from, _)| *from == key)
                .map_or(key, |(_, to)| to.clone());
            service.memfiles.restore(key, fid, fd);
        }
        service.memfiles.take_events();
        service.restore_pool(&state.pool, &mut fds, &mut notes);
        service.next_lease = LeaseId::new(state.meta.next_lease)
            .into_iter()
            .chain(service.ledger.leases().map(|(id, _)| id.next()))
            .max()
            .unwrap_or(LeaseId::FIRST);
        for (id, pid) in handoffs {
            if let Some(fd) = pidfd(pid) {
                service.handoffs.insert(id, (pid, fd));
            }
        }
        // Holders are watched again by pid. A pid reused meanwhile keeps
        // memory charged longer, never shorter.
        let pids: Vec<u32> = service
            .ledger
            .files()
            .flat_map(|(_, f)| f.holders().map(|(p, _)| p))
            .chain(
                service
                    .ledger
                    .retired()
                    .iter()
                    .flat_map(|r| r.holders().map(|(p, _)| p)),
            )
            .collect();
        for pid in pids {
            if let Some(fd) = pidfd(pid) {
                service.pidfds.insert(pid, fd);
            }
        }
        // Leases whose connection is gone end after the grace period.
        let now = service.now();
        let detached: Vec<LeaseId> = service
            .ledger
            .leases()
            .map(|(id, _)| id)
            .filter(|id| !attached.contains_key(&id.get()))
            .collect();
        for id in detached {
            service.detached.insert(id, now);
        }

        service.devices.restore(state.devices.values(), &mut notes);

        let mut sessions = Vec::new();
        let mut next_sid = state.meta.next_sid;
        for s in state.sessions.values() {
            next_sid = next_sid.max(s.sid + 1);
            let Some(fd) = fds.remove(&conn_fd_name(s.sid)) else {
                continue;
            };
            let stream = UnixStream::from(fd);
            let inode = crate::peer::socket_inode(std::os::fd::AsFd::as_fd(&stream)).unwrap_or(0);
            let lease = s
                .lease
                .and_then(LeaseId::new)
                .filter(|id| service.ledger.lease(*id).is_ok());
            let session = Session::restore(
                s.sid,
                Peer {
                    pid: s.pid,
                    uid: s.principal.uid,
                },
                convert::principal(&s.principal),
                inode,
                service.config.admission(s.principal.uid),
                s.state,
                Features::from_bits_truncate(s.features),
                lease,
            );
            service.sessions.insert(s.sid, super::session_rec(&session));
            sessions.push(ResumedSession { session, stream });
        }
        for (name, fd) in fds {
            let adopted = name
                .strip_prefix('f')
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|fid| Some((fid, crate::memory::inspect_kept(&fd)?)));
            match adopted {
                Some((fid, spec)) => {
                    // Its record was lost or damaged: its memory is kept,
                    // for an operator to look at, transfer or destroy.
                    let key = crate::ledger::FileKey::operators(
                        gmem_protocol::wire::Name::new(&format!("recovered.f{fid}"))
                            .expect("a valid name"),
                    );
                    if service.ledger.add_file(key.clone(), spec, None).is_ok() {
                        service.memfiles.restore(key, fid, fd);
                        notes.push(format!(
                            "kept memory fd {name} is not in the journal: kept as the operators' \
                             file recovered.f{fid}"
                        ));
                        continue;
                    }
                    notes.push(format!(
                        "kept memory fd {name}: could not be adopted; closed"
                    ));
                }
                None => notes.push(format!(
                    "kept fd {name} is not in the journal (a request that was never answered); \
                     closed"
                )),
            }
        }
        let mut meta = state.meta;
        // A restart is a gmemd taking over kept fds; a start after a stop
        // (nothing kept) only reads what the journal remembers.
        if took_over {
            meta.restarts += 1;
        }
        meta.next_sid = next_sid;
        service.history.restarts = meta.restarts;
        service.history.born = meta.born;
        service.history.recovered = format!(
            "{} file(s), {} lease(s), {} connection(s) from {} record(s){}",
            service.memfiles.len(),
            service.ledger.lease_count(),
            sessions.len(),
            recovered.records,
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {} problem(s) reported", notes.len())
            }
        );
        service.persistence = Some(Persistence::new(journal, keeper, meta));
        // Write the recovered state down whole: what was damaged or moved
        // is settled from here on.
        service.compact();
        for n in &notes {
            warn!("recovery: {n}");
        }
        info!("recovered {}", service.history.recovered);
        Recovery {
            service,
            sessions,
            next_sid,
            notes,
        }
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()
}
