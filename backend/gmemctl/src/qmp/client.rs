//! The QMP session: commands, replies, events, fd passing, deadlines.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::message::Message;
use super::*;

/// A connected QMP session (capabilities negotiated, command mode).
///
/// Commands carry an increasing numeric `id`; a reply with a different id
/// (left over from a command that timed out) is discarded.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    rbuf: Vec<u8>,
    events: VecDeque<QmpEvent>,
    greeting: QmpGreeting,
    timeout: Duration,
    next_id: u64,
    closed: bool,
}

impl QmpClient {
    /// Connects to the QMP socket at `path`, retrying while it does not exist
    /// yet (or nobody listens on it), reads the greeting and enters command
    /// mode with `qmp_capabilities`. Everything is bounded by `timeout`,
    /// which also becomes the per-command timeout (see [`Self::set_timeout`]).
    ///
    /// QEMU serves one QMP client per monitor at a time: a second client
    /// connects at the socket level but never gets a greeting (`Timeout`).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, QmpError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    thread::sleep(
                        CONNECT_RETRY.min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        log::debug!("qmp: connected to {}", path.display());
        Self::handshake(stream, timeout, deadline)
    }

    /// Like [`Self::connect`] but on an already connected stream, e.g. one
    /// end of a socketpair whose other end was given to QEMU as
    /// `-chardev socket,id=qmp,fd=N -mon chardev=qmp,mode=control`.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        Self::handshake(stream, timeout, Instant::now() + timeout)
    }

    fn handshake(
        stream: UnixStream,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Self, QmpError> {
        let mut client = Self {
            stream,
            rbuf: Vec::new(),
            events: VecDeque::new(),
            greeting: QmpGreeting {
                version: (0, 0, 0),
                package: String::new(),
                capabilities: Vec::new(),
            },
            timeout,
            next_id: 0,
            closed: false,
        };
        let greeting = client.read_value(deadline, timeout, "the QMP greeting")?;
        client.greeting = QmpGreeting::from_value(&greeting)?;
        log::debug!(
            "qmp: greeting from QEMU {}.{}.{} {:?}",
            client.greeting.version.0,
            client.greeting.version.1,
            client.greeting.version.2,
            client.greeting.package
        );
        client.execute_inner("qmp_capabilities", None, None, deadline, timeout)?;
        Ok(client)
    }

    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// Per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the per-command timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Removes and returns the queued asynchronous events, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let timeout = self.timeout;
        self.execute_inner(command, arguments, None, Instant::now() + timeout, timeout)
    }

    /// Like [`Self::execute`] with an explicit timeout for this command.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, None, Instant::now() + timeout, timeout)
    }

    /// Like [`Self::execute`], passing `fd` as `SCM_RIGHTS` on the `sendmsg`
    /// that carries the command (for `add-fd`, `getfd`, ...). QEMU gets its
    /// own duplicate; the caller keeps `fd`.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        let timeout = self.timeout;
        self.execute_inner(
            command,
            arguments,
            Some(fd),
            Instant::now() + timeout,
            timeout,
        )
    }

    fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.closed {
            return Err(QmpError::Closed);
        }
        self.next_id += 1;
        let id = self.next_id;
        let mut req = Map::new();
        req.insert("execute".into(), command.into());
        if let Some(args) = arguments {
            req.insert("arguments".into(), args);
        }
        req.insert("id".into(), id.into());
        let mut line = Value::Object(req).to_string();
        match fd {
            Some(fd) => log::debug!("qmp -> {line} (+fd {fd:?})"),
            None => log::debug!("qmp -> {line}"),
        }
        line.push('\n');
        self.send(line.as_bytes(), fd, deadline, timeout, command)?;

        let what = format!("the reply to {command:?}");
        loop {
            let v = self.read_value(deadline, timeout, &what)?;
            match Message::from_value(v)? {
                Message::Event(ev) => self.push_event(ev),
                Message::Return { id: rid, value } => {
                    if Self::id_matches(rid.as_ref(), id) {
                        return Ok(value);
                    }
                    log::warn!("qmp: discarding stale reply with id {rid:?} (waiting for {id})");
                }
                Message::Error {
                    id: rid,
                    class,
                    desc,
                } => {
                    if Self::id_matches(rid.as_ref(), id) {
                        log::debug!("qmp: {command} failed: {class}: {desc}");
                        return Err(QmpError::Command {
                            command: command.to_owned(),
                            class,
                            desc,
                        });
                    }
                    log::warn!(
                        "qmp: discarding stale error reply with id {rid:?}: {class}: {desc}"
                    );
                }
            }
        }
    }

    /// A reply without id (QEMU's answer to unparsable input) is taken as
    /// the answer to the one outstanding command.
    pub(super) fn id_matches(rid: Option<&Value>, id: u64) -> bool {
        rid.is_none_or(|r| r.as_u64() == Some(id))
    }

    fn push_event(&mut self, ev: QmpEvent) {
        log::debug!("qmp <- event {} {}", ev.event, ev.data);
        if self.events.len() >= MAX_QUEUED_EVENTS {
            if let Some(old) = self.events.pop_front() {
                log::warn!("qmp: event queue full, dropping {}", old.event);
            }
        }
        self.events.push_back(ev);
    }

    /// Waits for the event named `name` (queued or new) and returns it,
    /// leaving other events queued. Example: `DEVICE_DELETED` after
    /// `device_del`.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        let deadline = Instant::now() + timeout;
        let what = format!("event {name}");
        loop {
            if let Some(pos) = self.events.iter().position(|e| e.event == name) {
                if let Some(ev) = self.events.remove(pos) {
                    return Ok(ev);
                }
            }
            if self.closed {
                return Err(QmpError::Closed);
            }
            let v = self.read_value(deadline, timeout, &what)?;
            match Message::from_value(v)? {
                Message::Event(ev) => self.push_event(ev),
                other => log::warn!("qmp: discarding unsolicited reply {other:?}"),
            }
        }
    }

    fn send(
        &mut self,
        bytes: &[u8],
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
        timeout: Duration,
        command: &str,
    ) -> Result<(), QmpError> {
        let mut sent = 0;
        while sent < bytes.len() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout {
                    what: format!("sending {command:?}"),
                    timeout,
                });
            }
            self.stream
                .set_write_timeout(Some(remaining.max(Duration::from_millis(1))))?;
            let iov = [IoSlice::new(&bytes[sent..])];
            // The fd rides on the first chunk only.
            let res = match fd.filter(|_| sent == 0) {
                Some(fd) => {
                    let fds = [fd];
                    let mut space =
                        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut cmsg = SendAncillaryBuffer::new(&mut space);
                    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
                        return Err(QmpError::Protocol("SCM_RIGHTS buffer too small".into()));
                    }
                    sendmsg(&self.stream, &iov, &mut cmsg, SendFlags::NOSIGNAL)
                }
                None => sendmsg(
                    &self.stream,
                    &iov,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                ),
            };
            match res {
                Ok(0) => return Err(self.mark_closed()),
                Ok(n) => sent += n,
                Err(Errno::INTR | Errno::AGAIN) => {}
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(self.mark_closed()),
                Err(e) => return Err(QmpError::Io(e.into())),
            }
        }
        Ok(())
    }

    fn mark_closed(&mut self) -> QmpError {
        self.closed = true;
        QmpError::Closed
    }

    /// Reads one newline-terminated JSON message.
    fn read_value(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<Value, QmpError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.rbuf[scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=scanned + pos).collect();
                scanned = 0;
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                log::trace!("qmp <- {}", String::from_utf8_lossy(text));
                return serde_json::from_slice(text).map_err(|source| QmpError::Json {
                    line: truncate(&String::from_utf8_lossy(text)),
                    source,
                });
            }
            scanned = self.rbuf.len();
            if self.rbuf.len() > MAX_MESSAGE_BYTES {
                return Err(QmpError::Protocol(format!(
                    "message longer than {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            if self.closed {
                return Err(QmpError::Closed);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout {
                    what: what.to_owned(),
                    timeout,
                });
            }
            // SO_RCVTIMEO; zero would mean "forever", hence the 1 ms floor.
            self.stream
                .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(self.mark_closed()),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(self.mark_closed())
                }
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }

    // ----- typed helpers -------------------------------------------------

    /// `add-fd`: passes `fd` to QEMU and adds it to fd set `fdset_id` (a new
    /// set when `None`; QEMU 10 numbers new sets from 0). QEMU code that
    /// opens files through `qemu_open` (block devices, migration `file:`)
    /// accepts `/dev/fdset/<id>`; `memory-backend-file`'s `mem-path` does
    /// NOT (QEMU 10.0.2 calls plain `open(2)` and fails with ENOENT), so for
    /// guest RAM use an inherited fd or `/proc/<pid>/fd/<n>` instead.
    pub fn add_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u64>,
    ) -> Result<AddFdInfo, QmpError> {
        self.add_fd_opaque(fd, fdset_id, None)
    }

    /// `add-fd` with an `opaque` string (shown by `query-fdsets`).
    pub fn add_fd_opaque(
        &mut self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u64>,
        opaque: Option<&str>,
    ) -> Result<AddFdInfo, QmpError> {
        let mut args = Map::new();
        if let Some(id) = fdset_id {
            args.insert("fdset-id".into(), id.into());
        }
        if let Some(o) = opaque {
            args.insert("opaque".into(), o.into());
        }
        let v = self.execute_with_fd("add-fd", Some(Value::Object(args)), fd)?;
        parse_reply("add-fd", v)
    }

    /// `remove-fd`: removes fd set `fdset_id`, or only descriptor `fd` of it.
    pub fn remove_fd(&mut self, fdset_id: u64, fd: Option<i64>) -> Result<(), QmpError> {
        let mut args = json!({ "fdset-id": fdset_id });
        if let Some(fd) = fd {
            args["fd"] = fd.into();
        }
        self.execute("remove-fd", Some(args)).map(drop)
    }

    /// `query-fdsets`.
    pub fn query_fdsets(&mut self) -> Result<Vec<FdsetInfo>, QmpError> {
        let v = self.execute("query-fdsets", None)?;
        parse_reply("query-fdsets", v)
    }

    /// `getfd`: passes `fd` to QEMU under the name `fdname` (for
    /// `fd=<fdname>` / `fds=` properties of netdevs, chardevs, migration...).
    pub fn getfd(&mut self, fd: BorrowedFd<'_>, fdname: &str) -> Result<(), QmpError> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": fdname })), fd)
            .map(drop)
    }

    /// `closefd`: closes a descriptor passed with [`Self::getfd`].
    pub fn closefd(&mut self, fdname: &str) -> Result<(), QmpError> {
        self.execute("closefd", Some(json!({ "fdname": fdname })))
            .map(drop)
    }

    /// `migrate-set-capabilities`, e.g. `&[("x-ignore-shared", true)]`.
    /// Must be issued on both sides before `migrate`/`migrate-incoming`.
    pub fn migrate_set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .map(drop)
    }

    /// `query-migrate-capabilities` as (name, state) pairs.
    pub fn query_migrate_capabilities(&mut self) -> Result<Vec<(String, bool)>, QmpError> {
        #[derive(Deserialize)]
        struct Cap {
            capability: String,
            state: bool,
        }
        let v = self.execute("query-migrate-capabilities", None)?;
        let caps: Vec<Cap> = parse_reply("query-migrate-capabilities", v)?;
        Ok(caps.into_iter().map(|c| (c.capability, c.state)).collect())
    }

    /// `migrate-set-parameters` with a parameter object, e.g.
    /// `json!({"downtime-limit": 100, "max-bandwidth": 0})`.
    pub fn migrate_set_parameters(&mut self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .map(drop)
    }

    /// `migrate` to `uri` (e.g. `unix:/path`, `fd:name`). Returns as soon as
    /// the migration started; see [`Self::wait_migration`].
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// `migrate-incoming` on a QEMU started with `-incoming defer`. For a
    /// `unix:` URI QEMU listens on the path when this returns.
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// `migrate_cancel`.
    pub fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        self.execute("migrate_cancel", None).map(drop)
    }

    /// `query-migrate`.
    pub fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", None)?;
        Ok(MigrationInfo::from_value(&v))
    }

    /// Polls `query-migrate` (every 2–20 ms) until the migration is
    /// `completed` (returns its info), `failed`/`cancelled`
    /// ([`QmpError::MigrationFailed`]) or `timeout` expires.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<MigrationInfo, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut interval = MIGRATION_POLL_MIN;
        loop {
            let info = self.query_migrate()?;
            match info.status {
                MigrationStatus::Completed => return Ok(info),
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    return Err(QmpError::MigrationFailed {
                        status: info.status,
                        desc: info.error_desc,
                    })
                }
                _ => {}
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout {
                    what: format!("migration to complete (last status {})", info.status),
                    timeout,
                });
            }
            thread::sleep(interval.min(remaining));
            interval = (interval * 2).min(MIGRATION_POLL_MAX);
        }
    }

    /// `query-status`: the run state, e.g. `running`, `paused`,
    /// `postmigrate`, `inmigrate`, `prelaunch`, `shutdown`.
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None)?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {v}")))
    }

    /// `human-monitor-command`: runs an HMP command line (`info mtree`,
    /// `xp /8xb 0x1000`) and returns its output.
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String, QmpError> {
        let v = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        v.as_str().map(str::to_owned).ok_or_else(|| {
            QmpError::Protocol(format!("human-monitor-command returned a non-string: {v}"))
        })
    }

    /// `cont`: resumes the guest.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// `stop`: pauses the guest.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// `quit`: makes QEMU exit. QEMU may close the socket before or after
    /// replying; both count as success. The client is closed afterwards.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        let res = match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            // QEMU may close the socket while the command is still going out.
            Err(QmpError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.closed = true;
        res
    }

    /// `object-add` with the full object description, e.g.
    /// `json!({"qom-type": "memory-backend-file", "id": "mem1", "size": 1<<30, "mem-path": p, "share": true})`.
    pub fn object_add(&mut self, object: Value) -> Result<(), QmpError> {
        self.execute("object-add", Some(object)).map(drop)
    }

    /// `object-del`.
    pub fn object_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("object-del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `device_add` with the full device description, e.g.
    /// `json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"})`.
    pub fn device_add(&mut self, device: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(device)).map(drop)
    }

    /// `device_del`. Only *requests* removal: the guest must cooperate and
    /// completion is the `DEVICE_DELETED` event (see [`Self::wait_event`]).
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `query-memory-devices`.
    pub fn query_memory_devices(&mut self) -> Result<Vec<MemoryDeviceInfo>, QmpError> {
        let v = self.execute("query-memory-devices", None)?;
        v.as_array()
            .ok_or_else(|| QmpError::Protocol(format!("query-memory-devices: not a list: {v}")))?
            .iter()
            .map(MemoryDeviceInfo::from_value)
            .collect()
    }
}

pub(super) fn parse_reply<T: serde::de::DeserializeOwned>(
    command: &str,
    v: Value,
) -> Result<T, QmpError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        QmpError::Protocol(format!(
            "unexpected reply to {command}: {e}: {}",
            truncate(&v.to_string())
        ))
    })
}
