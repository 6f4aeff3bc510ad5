//! The epoll loop: accepts connections, moves frames, and hands requests to
//! the [`Service`]. No policy lives here.
//!
//! Every socket is non-blocking and level-triggered. A client gets at most
//! [`FRAMES_PER_WAKEUP`] requests served per wakeup, and no new request is
//! read from it while its replies are still queued, so a client that floods
//! or never reads cannot stall the others or grow the daemon's memory.
//!
//! When a REVOKE ends a lease, that lease's connection is closed; the
//! requests it already sent (up to [`MAX_ABORTED_REPLIES`]) are answered
//! `ECONNABORTED` first, and it may send no more.
//!
//! Nobody can starve the others of connections: a slot is granted at
//! accept by the [`gate::Gate`] (operators' reserved slots, a quota per
//! principal), a connection that has not sent HELLO within the deadline is
//! closed, and when gmemd has no fd left to accept with, the listener
//! rests for a moment instead of spinning. A timer drives the deadline,
//! the rest and the service's upkeep. Every line a client can make gmemd
//! repeat is rate-limited ([`crate::log_limit`]).
//!
//! By concept: `connection` (one client: frames and serving), `gate`
//! (connection slots), `listener` (the socket and its directory).

mod connection;
mod devices;
mod gate;
mod listener;

pub use listener::listen;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use epoll::{ControlOptions, Event, Events};
use gmem_protocol::conn::WholeRead;
use gmem_protocol::wire::LeaseId;
use log::{debug, error, info, warn, Level};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::log_limit::LogLimiter;
use crate::peer;
use crate::service::persist::ResumedSession;
use crate::service::{Served, Service, SessionId};
use connection::{read_events, serve_connection, Connection};
pub use gate::{Gate, Refusal};

/// Why [`EventLoop::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Stop for good (SIGTERM, SIGINT, the shutdown handle).
    Shutdown,
    /// Restart in place: hand everything to a new gmemd (SIGHUP).
    Restart,
}

/// How often the timer ticks: the HELLO deadline's and upkeep's grain.
pub const TICK: Duration = Duration::from_millis(250);

/// Connections accepted per wakeup before the loop turns to the others.
pub const ACCEPTS_PER_WAKEUP: usize = 64;

/// How long the listener rests when gmemd has no fd to accept with.
pub const ACCEPT_REST: Duration = Duration::from_millis(200);

/// Requests served for one client before the loop turns to the others.
pub const FRAMES_PER_WAKEUP: usize = 64;

/// Requests of a revoked lease still in flight that get an `ECONNABORTED`
/// reply before its connection closes; any beyond see the connection close.
pub const MAX_ABORTED_REPLIES: usize = 1024;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another gmemd answers on the socket.
    #[error("another gmemd is already serving {0}")]
    AlreadyRunning(PathBuf),
    /// The socket's directory is not gmemd's own.
    #[error("refusing the socket directory")]
    SocketDir(#[from] crate::runtime_dir::RuntimeDirError),
    /// Binding the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// epoll, eventfd or signalfd failed.
    #[error("event loop setup failed: {what}")]
    Setup {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for events failed.
    #[error("epoll_wait failed")]
    Wait(#[source] io::Error),
}

/// epoll tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    Exit,
    Signal,
    Timer,
    Devices,
    Conn(SessionId),
    Unknown(u64),
}

const FIRST_CONN: u64 = 16;

impl From<u64> for Token {
    fn from(value: u64) -> Self {
        match value {
            0 => Token::Listener,
            1 => Token::Exit,
            2 => Token::Signal,
            3 => Token::Timer,
            4 => Token::Devices,
            v if v >= FIRST_CONN => Token::Conn(v),
            v => Token::Unknown(v),
        }
    }
}

impl Token {
    fn data(self) -> u64 {
        match self {
            Token::Listener => 0,
            Token::Exit => 1,
            Token::Signal => 2,
            Token::Timer => 3,
            Token::Devices => 4,
            Token::Conn(v) | Token::Unknown(v) => v,
        }
    }
}

/// Stops a running [`EventLoop`] from another thread.
#[derive(Debug)]
pub struct ShutdownHandle(EventFd);

impl ShutdownHandle {
    /// Asks the loop to stop.
    ///
    /// # Errors
    /// The eventfd write failure.
    pub fn shutdown(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The daemon's event loop.
#[derive(Debug)]
pub struct EventLoop {
    epoll: OwnedFd,
    listener: UnixListener,
    socket_path: PathBuf,
    exit: EventFd,
    signals: Option<OwnedFd>,
    timer: TimerFd,
    conns: HashMap<SessionId, Connection>,
    next_id: SessionId,
    service: Service,
    gate: Gate,
    /// The listener rests (out of epoll) until then.
    resting_until: Option<Instant>,
    log_limiter: LogLimiter,
    /// Leave the socket file behind on drop (a successor serves it).
    keep_socket: bool,
    /// A RESTART was served: restart in place once its reply is out.
    restart_asked: bool,
    /// Ticks since the last status line to the fd keeper.
    ticks: u32,
    /// The devices' calls, once [`EventLoop::serve_devices`] ran.
    devices: Option<devices::DeviceCalls>,
}

impl EventLoop {
    /// Listens on `socket_path` (replacing a stale socket, refusing a live one).
    ///
    /// # Errors
    /// [`DaemonError`].
    pub fn bind(socket_path: &Path, service: Service) -> Result<Self, DaemonError> {
        let listener = listener::listen(socket_path)?;
        Self::new(listener, socket_path, service)
    }

    /// Serves on `listener` (made by [`listen`], or handed over from a
    /// previous gmemd), whose path is `socket_path`.
    ///
    /// # Errors
    /// [`DaemonError::Setup`].
    pub fn new(
        listener: UnixListener,
        socket_path: &Path,
        service: Service,
    ) -> Result<Self, DaemonError> {
        listener
            .set_nonblocking(true)
            .map_err(|source| DaemonError::Setup {
                what: "non-blocking listener",
                source,
            })?;
        let setup = |what| move |source| DaemonError::Setup { what, source };
        let raw = epoll::create(true).map_err(setup("epoll_create"))?;
        // SAFETY: `raw` is a new epoll fd returned just above and owned by
        // nothing else; wrapping it makes sure it is closed.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let exit = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| {
            DaemonError::Setup {
                what: "eventfd",
                source: e,
            }
        })?;
        let mut timer = TimerFd::new().map_err(|e| DaemonError::Setup {
            what: "timerfd",
            source: e.into(),
        })?;
        timer
            .reset(TICK, Some(TICK))
            .map_err(|e| DaemonError::Setup {
                what: "timerfd_settime",
                source: e.into(),
            })?;
        let limits = &service.config().limits;
        let gate = Gate::new(
            limits.max_connections,
            limits.reserved_operator_connections,
            service.config().quotas.connections,
        );
        let lp = EventLoop {
            epoll,
            listener,
            socket_path: socket_path.to_owned(),
            exit,
            signals: None,
            timer,
            conns: HashMap::new(),
            next_id: FIRST_CONN,
            service,
            gate,
            resting_until: None,
            log_limiter: LogLimiter::new(),
            keep_socket: false,
            restart_asked: false,
            ticks: 0,
            devices: None,
        };
        lp.add(lp.listener.as_raw_fd(), Token::Listener, Events::EPOLLIN)
            .map_err(setup("epoll_ctl listener"))?;
        lp.add(lp.exit.as_raw_fd(), Token::Exit, Events::EPOLLIN)
            .map_err(setup("epoll_ctl eventfd"))?;
        lp.add(lp.timer.as_raw_fd(), Token::Timer, Events::EPOLLIN)
            .map_err(setup("epoll_ctl timerfd"))?;
        info!("listening on {}", socket_path.display());
        Ok(lp)
    }

    /// Takes back the connections a previous gmemd served (after a crash,
    /// restart or upgrade): each first gets a restart notice saying
    /// whether a request of it is still unread (it will be answered), then
    /// is served as before. Session ids go on from `next_sid`.
    pub fn resume(&mut self, sessions: Vec<ResumedSession>, next_sid: SessionId) {
        self.next_id = self.next_id.max(next_sid);
        let restarts = u32::try_from(self.service.history().restarts).unwrap_or(u32::MAX);
        for ResumedSession { session, stream } in sessions {
            let id = session.id;
            self.next_id = self.next_id.max(id + 1);
            let principal = session.principal.clone();
            // Its slot, operator or not: it was admitted before.
            if self.gate.enter(&principal, true).is_err() {
                warn!("connection {id}: no slot left after the restart; closing it");
                self.service
                    .close_session(&session, "no slot left after a gmemd restart");
                continue;
            }
            let _ = stream.set_nonblocking(true);
            let pending = matches!(
                gmem_protocol::conn::peek_queued(stream.as_fd()),
                Ok(gmem_protocol::conn::Queued::Whole(_)
                    | gmem_protocol::conn::Queued::Partial { .. })
            );
            if let Err(e) = self.add(stream.as_raw_fd(), Token::Conn(id), read_events(false)) {
                self.gate.leave(&principal);
                warn!("connection {id}: epoll_ctl: {e}; closing it");
                self.service
                    .close_session(&session, "could not be watched after a restart");
                continue;
            }
            let mut conn = Connection::new(stream, session);
            let notice = gmem_protocol::server::encode_restart_notice(restarts, pending);
            conn.writer.push(notice.header, &notice.payload, notice.fds);
            self.conns.insert(id, conn);
            self.flush(id);
        }
        info!(
            "resumed {} connection(s) after restart {restarts}",
            self.conns.len()
        );
    }

    /// Also stops on SIGTERM or SIGINT, and ends for a restart in place on
    /// SIGHUP (blocked and read through a signalfd).
    ///
    /// # Errors
    /// [`DaemonError::Setup`].
    pub fn stop_on_signals(&mut self) -> Result<(), DaemonError> {
        let fd = crate::signals::daemon_fd().map_err(|source| DaemonError::Setup {
            what: "signalfd",
            source,
        })?;
        self.add(fd.as_raw_fd(), Token::Signal, Events::EPOLLIN)
            .map_err(|source| DaemonError::Setup {
                what: "epoll_ctl signalfd",
                source,
            })?;
        self.signals = Some(fd);
        Ok(())
    }

    /// A handle that stops the loop.
    ///
    /// # Errors
    /// Duplicating the eventfd failed.
    pub fn shutdown_handle(&self) -> io::Result<ShutdownHandle> {
        Ok(ShutdownHandle(self.exit.try_clone()?))
    }

    /// Gives the listening socket to the fd keeper, so a successor serves
    /// the same socket and clients never see it missing.
    pub fn keep_listener(&mut self) {
        let fd = self.listener.as_fd();
        self.service.keep_fd(crate::fdstore::LISTEN_NAME, fd);
    }

    /// The service.
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.service
    }

    /// The service (for inspection).
    pub fn service(&self) -> &Service {
        &self.service
    }

    fn add(&self, fd: RawFd, token: Token, events: Events) -> io::Result<()> {
        epoll::ctl(
            self.epoll.as_raw_fd(),
            ControlOptions::EPOLL_CTL_ADD,
            fd,
            Event::new(events, token.data()),
        )
    }

    /// Serves until shut down by the handle or a signal.
    ///
    /// # Errors
    /// [`DaemonError::Wait`].
    pub fn run(&mut self) -> Result<RunEnd, DaemonError> {
        let mut events = vec![Event::new(Events::empty(), 0); 64];
        loop {
            let n = match epoll::wait(self.epoll.as_raw_fd(), -1, &mut events) {
                Ok(n) => n,
                // A signal not routed to the signalfd (e.g. a debugger's)
                // interrupts the wait; nothing happened, wait again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DaemonError::Wait(e)),
            };
            for event in &events[..n] {
                let flags = Events::from_bits_retain(event.events);
                match Token::from(event.data) {
                    Token::Listener => self.accept_all(),
                    Token::Exit => {
                        info!("shutdown requested");
                        return Ok(RunEnd::Shutdown);
                    }
                    Token::Signal => {
                        let signal = self
                            .signals
                            .as_ref()
                            .map_or(0, |fd| crate::signals::read_signal(fd.as_fd()));
                        if signal == libc::SIGHUP as u32 {
                            info!("SIGHUP: restarting in place, state and fds handed over");
                            return Ok(RunEnd::Restart);
                        }
                        info!("signal {signal} received, shutting down");
                        return Ok(RunEnd::Shutdown);
                    }
                    Token::Timer => self.tick(),
                    Token::Devices => self.answer_device_calls(),
                    Token::Conn(id) => self.serve(id, flags),
                    Token::Unknown(data) => warn!("event for unknown token {data}: {flags:?}"),
                }
            }
            // The log lines of the wakeup, in one write after its replies.
            crate::log_sink::flush();
            if self.restart_asked {
                info!("RESTART: restarting in place, state and fds handed over");
                return Ok(RunEnd::Restart);
            }
        }
    }

    /// Gets ready for a restart in place: sends what replies it can (up
    /// to a second), closes connections whose replies would be lost, has
    /// the service journal everything, and returns every fd to hand over,
    /// named: `listen`, `c<id>`, `f<id>`. The loop must not run again.
    pub fn handover(&mut self) -> Vec<(String, RawFd)> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let ids: Vec<SessionId> = self.conns.keys().copied().collect();
        loop {
            let mut waiting = false;
            for id in &ids {
                if let Some(conn) = self.conns.get_mut(id) {
                    if !conn.writer.is_empty()
                        && conn.writer.flush(conn.stream.as_fd()).ok() != Some(true)
                    {
                        waiting = true;
                    }
                }
            }
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let stuck: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.writer.is_empty() || c.closing)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            self.drop_conn(
                id,
                "its replies could not be sent before a restart".to_owned(),
            );
        }
        let sessions: Vec<&crate::service::Session> =
            self.conns.values().map(|c| &c.session).collect();
        let mut fds = self.service.handover(&sessions);
        fds.push((
            crate::fdstore::LISTEN_NAME.to_owned(),
            self.listener.as_raw_fd(),
        ));
        for (id, conn) in &self.conns {
            fds.push((
                crate::service::persist::conn_fd_name(*id),
                conn.stream.as_raw_fd(),
            ));
        }
        // The new gmemd serves the same socket: it must stay.
        self.keep_socket = true;
        fds
    }

    /// Accepts what is pending, at most [`ACCEPTS_PER_WAKEUP`]: the
    /// listener stays ready (level-triggered) if more wait, and clients
    /// already connected are served in between, however fast others
    /// connect.
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    crate::log_limited!(
                        self.log_limiter,
                        "accept",
                        Level::Error,
                        "accept failed: {e}{}",
                        if out_of_fds {
                            format!("; not accepting for {ACCEPT_REST:?}")
                        } else {
                            String::new()
                        }
                    );
                    // The pending connection stays pending: were the
                    // listener left in epoll, it would wake the loop again
                    // at once, forever.
                    self.rest_listener();
                    return;
                }
            };
            self.admit(stream);
        }
    }

    /// Takes the listener out of epoll until the next tick after
    /// [`ACCEPT_REST`].
    fn rest_listener(&mut self) {
        if self.resting_until.is_none() {
            let _ = epoll::ctl(
                self.epoll.as_raw_fd(),
                ControlOptions::EPOLL_CTL_DEL,
                self.listener.as_raw_fd(),
                Event::new(Events::empty(), 0),
            );
        }
        self.resting_until = Some(Instant::now() + ACCEPT_REST);
    }

    /// The timer: the listener's rest ends, connections past the HELLO
    /// deadline close, the service does its upkeep.
    fn tick(&mut self) {
        // Reading resets the timer's readiness; its count is not needed.
        let _ = self.timer.wait();
        let now = Instant::now();
        if self.resting_until.is_some_and(|until| now >= until) {
            self.resting_until = None;
            if let Err(e) = self.add(self.listener.as_raw_fd(), Token::Listener, Events::EPOLLIN) {
                error!("epoll_ctl listener: {e}");
            }
        }
        let deadline = self.service.config().limits.hello_timeout;
        let late: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.awaiting_hello() && now - c.accepted >= deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.drop_conn(id, format!("no HELLO within {deadline:?}"));
        }
        let stalled: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.partial_since
                    .is_some_and(|since| now - since >= connection::STALLED_AFTER)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            self.serve(id, Events::EPOLLIN);
        }
        self.service.upkeep();
        // The keeper's watchdog every tick; the status line every 5 s.
        self.ticks = (self.ticks + 1) % 20;
        self.service.notify_alive(self.ticks == 0);
    }

    /// Gives a new connection a slot and a session, or closes it at once
    /// saying why in the log.
    fn admit(&mut self, stream: UnixStream) {
        let (peer, principal) = match peer::peer_of(&stream) {
            Ok(peer) => (peer, peer::principal_of(&stream, peer)),
            Err(e) => {
                crate::log_limited!(
                    self.log_limiter,
                    "peer",
                    Level::Warn,
                    "dropping a new connection: SO_PEERCRED: {e}"
                );
                return;
            }
        };
        let operator =
            self.service.config().admission(peer.uid) == crate::config::Admission::Operator;
        if let Err(refusal) = self.gate.enter(&principal, operator) {
            crate::log_limited!(
                self.log_limiter,
                format!("gate {}", principal.uid),
                Level::Warn,
                "turned away a connection from pid {} ({}): {refusal}",
                peer.pid,
                crate::principal::describe(&principal)
            );
            return;
        }
        let setup = stream
            .set_nonblocking(true)
            .and_then(|()| peer::socket_inode(stream.as_fd()));
        let inode = match setup {
            Ok(inode) => inode,
            Err(e) => {
                self.gate.leave(&principal);
                warn!("dropping a new connection: {e}");
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = self.add(stream.as_raw_fd(), Token::Conn(id), read_events(false)) {
            self.gate.leave(&principal);
            warn!("dropping a new connection: epoll_ctl: {e}");
            return;
        }
        let session = self.service.open_session(id, peer, principal, inode);
        self.conns.insert(id, Connection::new(stream, session));
    }

    fn serve(&mut self, id: SessionId, flags: Events) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut ended = Vec::new();
        let mut restart = false;
        let result = serve_connection(conn, &mut self.service, flags, &mut ended, &mut restart);
        self.restart_asked |= restart;
        // Revoked leases are cut off before the REVOKE's reply goes out, so
        // the operator never sees a revoked VMM still being served.
        for lease in ended {
            self.close_revoked(lease);
        }
        match result {
            Ok(()) => self.flush(id),
            Err(reason) => self.drop_conn(id, reason),
        }
    }

    /// Sends what is queued; closes a closing connection once it is out,
    /// else waits for writability while replies remain.
    fn flush(&mut self, id: SessionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.writer.flush(conn.stream.as_fd()) {
            Ok(true) if conn.closing => {
                self.drop_conn(id, "closed by gmemd after its reply".to_owned())
            }
            Ok(_) => self.update_interest(id),
            Err(e) => self.drop_conn(id, format!("send failed: {e}")),
        }
    }

    /// Closes the connection of a revoked lease: what it already sent is
    /// answered `ECONNABORTED` (bounded), it may send nothing more, and the
    /// connection goes once those replies are out.
    fn close_revoked(&mut self, lease: LeaseId) {
        let Some((&id, conn)) = self
            .conns
            .iter_mut()
            .find(|(_, c)| c.session.lease() == Some(lease))
        else {
            return;
        };
        conn.session.revoke();
        let fd = conn.stream.as_fd();
        let mut answered = 0;
        while answered < MAX_ABORTED_REPLIES {
            match conn.reader.read_whole(fd) {
                Ok(WholeRead::Frame(frame)) => {
                    let Served { reply, .. } =
                        self.service.serve(&mut conn.session, frame, Some(fd));
                    conn.writer.push(reply.header, &reply.payload, reply.fds);
                    answered += 1;
                }
                Ok(WholeRead::Partial | WholeRead::Empty) | Err(_) => break,
            }
        }
        if answered > 0 {
            info!("lease {lease} revoked: {answered} request(s) in flight answered ECONNABORTED");
        }
        // Further writes of the client fail (EPIPE) instead of piling up.
        let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        conn.closing = true;
        self.flush(id);
    }

    fn drop_conn(&mut self, id: SessionId, reason: String) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        // The fd is closed right after; a failed delete changes nothing.
        let _ = epoll::ctl(
            self.epoll.as_raw_fd(),
            ControlOptions::EPOLL_CTL_DEL,
            conn.stream.as_raw_fd(),
            Event::new(Events::empty(), 0),
        );
        self.gate.leave(&conn.session.principal);
        self.service.close_session(&conn.session, &reason);
        // The client sees the close as it would a reply: the log line of
        // what led to it is written first.
        crate::log_sink::flush();
        drop(conn);
    }

    /// Waits for writability (and stops reading) while replies are queued;
    /// back to reading once they are out.
    fn update_interest(&mut self, id: SessionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let events = match (!conn.writer.is_empty(), conn.closing) {
            // Its read side is shut (or it is going anyway): a hangup
            // shows as EPOLLHUP and a failed send, so RDHUP, which would
            // stay ready and spin the loop, is not asked for.
            (true, true) => Events::EPOLLOUT,
            (true, false) => Events::EPOLLOUT | Events::EPOLLRDHUP,
            (false, _) => read_events(conn.partial),
        };
        if events == conn.armed {
            return;
        }
        conn.armed = events;
        self.rearm(id, events);
    }

    fn rearm(&self, id: SessionId, events: Events) {
        if let Some(conn) = self.conns.get(&id) {
            if let Err(e) = epoll::ctl(
                self.epoll.as_raw_fd(),
                ControlOptions::EPOLL_CTL_MOD,
                conn.stream.as_raw_fd(),
                Event::new(events, Token::Conn(id).data()),
            ) {
                error!("epoll_ctl MOD for connection {id}: {e}");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        // With an fd keeper, the socket, the connections and the leases
        // belong to the next gmemd (or go with the keeper when it stops).
        if self.keep_socket || self.service.has_keeper() {
            info!("leaving the socket, connections and leases to the fd keeper");
            return;
        }
        let ids: Vec<SessionId> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id, "gmemd shutting down".to_owned());
        }
        if let Err(e) = std::fs::remove_file(&self.socket_path) {
            debug!("removing {}: {e}", self.socket_path.display());
        }
    }
}
