//! A small blocking QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! Used by `gmemctl launch/upgrade/hotplug` to drive QEMU: pass file
//! descriptors (`add-fd`, `getfd`) as `SCM_RIGHTS`, hot-plug memory, and run
//! live migrations (`x-ignore-shared`) between two QEMUs that map the same
//! gmemd-owned RAM.
//!
//! Every read and write is bounded by a deadline; the client never blocks
//! forever. Asynchronous events received while waiting for a reply are kept in
//! a small queue, see [`QmpClient::take_events`] and [`QmpClient::wait_event`].
//!
//! ```no_run
//! # use std::time::Duration;
//! # use gmemd::qmp::QmpClient;
//! let mut qmp = QmpClient::connect("/run/vm0/qmp.sock", Duration::from_secs(5))?;
//! assert_eq!(qmp.query_status()?, "running");
//! # Ok::<(), gmemd::qmp::QmpError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// At most this many unread events are kept; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 256;
/// A single QMP message longer than this is treated as a protocol error.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Interval between connection attempts while the socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// First and maximum interval between `query-migrate` polls.
const MIGRATION_POLL_MIN: Duration = Duration::from_millis(2);
const MIGRATION_POLL_MAX: Duration = Duration::from_millis(20);

/// Errors from the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket could not be connected to (within the connect timeout).
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last error from `connect(2)`.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the socket failed.
    #[error("QMP socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// QEMU sent something that is not valid JSON.
    #[error("invalid JSON from QEMU ({line:?}): {source}")]
    Json {
        /// The offending line (possibly truncated).
        line: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The first message was not a QMP greeting.
    #[error("bad QMP greeting: {0}")]
    Greeting(String),
    /// QEMU answered a command with an `error` reply.
    #[error("QMP command {command:?} failed: {class}: {desc}")]
    Command {
        /// Command that failed.
        command: String,
        /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// Human-readable description from QEMU.
        desc: String,
    },
    /// No answer within the deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// QEMU closed the connection.
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// A well-formed JSON message that does not fit the protocol or the
    /// expected reply shape.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// `wait_migration` saw the migration end in `failed` or `cancelled`.
    #[error("migration {status}{}", desc.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    MigrationFailed {
        /// Final migration status.
        status: MigrationStatus,
        /// `error-desc` reported by QEMU, if any.
        desc: Option<String>,
    },
}

/// Contents of the QMP greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU version (major, minor, micro).
    pub version: (u64, u64, u64),
    /// Distribution package string, often empty.
    pub package: String,
    /// Capabilities QEMU offers (e.g. `oob`); none is enabled by the client.
    pub capabilities: Vec<String>,
}

impl QmpGreeting {
    /// Parses `{"QMP": {"version": {"qemu": {...}, "package": ...}, "capabilities": [...]}}`.
    pub fn from_value(v: &Value) -> Result<Self, QmpError> {
        let bad = || QmpError::Greeting(truncate(&v.to_string()));
        let qmp = v.get("QMP").ok_or_else(bad)?;
        let version = qmp.get("version").ok_or_else(bad)?;
        let qemu = version.get("qemu").ok_or_else(bad)?;
        let num = |k: &str| qemu.get(k).and_then(Value::as_u64).ok_or_else(bad);
        Ok(Self {
            version: (num("major")?, num("minor")?, num("micro")?),
            package: version
                .get("package")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            capabilities: qmp
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// An asynchronous QMP event, e.g. `STOP`, `RESUME`, `DEVICE_DELETED`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name.
    pub event: String,
    /// Event payload (`Value::Null` when absent).
    pub data: Value,
    /// Host time of the event as (seconds, microseconds), if sent.
    pub timestamp: Option<(u64, u64)>,
}

impl QmpEvent {
    /// Parses an event message; `None` if `v` has no `event` member.
    pub fn from_value(v: &Value) -> Option<Self> {
        let event = v.get("event")?.as_str()?.to_owned();
        let timestamp = v.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_u64()?,
                t.get("microseconds")?.as_u64()?,
            ))
        });
        Some(Self {
            event,
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        })
    }
}

/// Reply to `add-fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AddFdInfo {
    /// The fd set the descriptor was added to.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u64,
    /// The descriptor number inside QEMU (usable as `/dev/fdset/<id>`).
    pub fd: i64,
}

/// One descriptor of an fd set, from `query-fdsets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetFdInfo {
    /// Descriptor number inside QEMU.
    pub fd: i64,
    /// Opaque string given to `add-fd`.
    #[serde(default)]
    pub opaque: Option<String>,
}

/// One fd set, from `query-fdsets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetInfo {
    /// Fd set id.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u64,
    /// Descriptors in the set.
    #[serde(default)]
    pub fds: Vec<FdsetFdInfo>,
}

/// A memory device, from `query-memory-devices`.
///
/// The QMP reply is a union `{"type": T, "data": {...}}` whose members differ
/// per type (`dimm`, `nvdimm`, `virtio-mem`, `virtio-pmem`, `sgx-epc`, ...);
/// the common ones are lifted out, everything is kept in `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryDeviceInfo {
    /// Union tag, e.g. `dimm` or `virtio-mem`.
    pub kind: String,
    /// Device id (`id=` of `device_add`), if any.
    pub id: Option<String>,
    /// Guest physical address (`addr` or, for virtio devices, `memaddr`).
    pub addr: Option<u64>,
    /// Size in bytes (currently plugged size for `virtio-mem`).
    pub size: Option<u64>,
    /// QOM path of the memory backend, e.g. `/objects/mem1`.
    pub memdev: Option<String>,
    /// The full `data` member.
    pub data: Value,
}

impl MemoryDeviceInfo {
    /// Parses one element of the `query-memory-devices` reply.
    pub fn from_value(v: &Value) -> Result<Self, QmpError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol(format!("memory device without type: {v}")))?
            .to_owned();
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let str_of = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            kind,
            id: str_of("id"),
            addr: data
                .get("addr")
                .or_else(|| data.get("memaddr"))
                .and_then(Value::as_u64),
            size: data.get("size").and_then(Value::as_u64),
            memdev: str_of("memdev"),
            data,
        })
    }
}

/// Status of a migration (`MigrationStatus` in the QAPI schema).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MigrationStatus {
    /// No migration has been started (`none`, or `status` absent).
    #[default]
    None,
    /// `setup`
    Setup,
    /// `active`
    Active,
    /// `pre-switchover`
    PreSwitchover,
    /// `device`
    Device,
    /// `wait-unplug`
    WaitUnplug,
    /// `postcopy-active` and the other `postcopy-*` states.
    Postcopy(String),
    /// `cancelling`
    Cancelling,
    /// `cancelled`
    Cancelled,
    /// `completed`
    Completed,
    /// `failed`
    Failed,
    /// Any status this client does not know.
    Other(String),
}

impl MigrationStatus {
    /// Maps a QMP status string.
    pub fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "setup" => Self::Setup,
            "active" => Self::Active,
            "pre-switchover" => Self::PreSwitchover,
            "device" => Self::Device,
            "wait-unplug" => Self::WaitUnplug,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            s if s.starts_with("postcopy-") => Self::Postcopy(s.to_owned()),
            s => Self::Other(s.to_owned()),
        }
    }

    /// The QMP spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::WaitUnplug => "wait-unplug",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Postcopy(s) | Self::Other(s) => s,
        }
    }

    /// `completed`, `failed` or `cancelled`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reply to `query-migrate`. Every field except `status` may be absent
/// depending on the migration state and side (source or destination).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationInfo {
    /// Migration status.
    pub status: MigrationStatus,
    /// `total-time`: ms since the migration started (final value once done).
    pub total_time_ms: Option<u64>,
    /// `downtime`: ms the guest was stopped (only once completed).
    pub downtime_ms: Option<u64>,
    /// `expected-downtime`: estimate while active.
    pub expected_downtime_ms: Option<u64>,
    /// `setup-time`: ms spent in the setup phase.
    pub setup_time_ms: Option<u64>,
    /// `ram.transferred`: bytes sent for RAM so far.
    pub ram_transferred_bytes: Option<u64>,
    /// `ram.total`: bytes of RAM to migrate (excludes ignored blocks).
    pub ram_total_bytes: Option<u64>,
    /// `ram.remaining`: bytes still to send.
    pub ram_remaining_bytes: Option<u64>,
    /// `ram.duplicate`: number of zero pages.
    pub ram_duplicate_pages: Option<u64>,
    /// `ram.normal`: number of full pages sent.
    pub ram_normal_pages: Option<u64>,
    /// `ram.normal-bytes`: bytes of full pages sent.
    pub ram_normal_bytes: Option<u64>,
    /// `ram.dirty-sync-count`: number of dirty bitmap syncs.
    pub ram_dirty_sync_count: Option<u64>,
    /// `ram.mbps`: throughput in Mbit/s.
    pub ram_mbps: Option<f64>,
    /// `error-desc`, set when the migration failed.
    pub error_desc: Option<String>,
    /// The full reply, for fields not lifted out above.
    pub raw: Value,
}

impl MigrationInfo {
    /// Parses the `return` value of `query-migrate`.
    pub fn from_value(v: &Value) -> Self {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let ram = v.get("ram");
        let r = |k: &str| ram.and_then(|r| r.get(k)).and_then(Value::as_u64);
        Self {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .map(MigrationStatus::parse)
                .unwrap_or_default(),
            total_time_ms: u("total-time"),
            downtime_ms: u("downtime"),
            expected_downtime_ms: u("expected-downtime"),
            setup_time_ms: u("setup-time"),
            ram_transferred_bytes: r("transferred"),
            ram_total_bytes: r("total"),
            ram_remaining_bytes: r("remaining"),
            ram_duplicate_pages: r("duplicate"),
            ram_normal_pages: r("normal"),
            ram_normal_bytes: r("normal-bytes"),
            ram_dirty_sync_count: r("dirty-sync-count"),
            ram_mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64),
            error_desc: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: v.clone(),
        }
    }
}

/// One parsed message from QEMU.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
}

impl Message {
    fn from_value(v: Value) -> Result<Self, QmpError> {
        let Value::Object(mut map) = v else {
            return Err(QmpError::Protocol(format!("not a JSON object: {v}")));
        };
        let id = map.remove("id");
        if let Some(value) = map.remove("return") {
            return Ok(Self::Return { id, value });
        }
        if let Some(err) = map.remove("error") {
            let s = |k: &str| {
                err.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            return Ok(Self::Error {
                id,
                class: s("class"),
                desc: s("desc"),
            });
        }
        let v = Value::Object(map);
        QmpEvent::from_value(&v)
            .map(Self::Event)
            .ok_or_else(|| QmpError::Protocol(truncate(&v.to_string())))
    }
}

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
    fn id_matches(rid: Option<&Value>, id: u64) -> bool {
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

fn parse_reply<T: serde::de::DeserializeOwned>(command: &str, v: Value) -> Result<T, QmpError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        QmpError::Protocol(format!(
            "unexpected reply to {command}: {e}: {}",
            truncate(&v.to_string())
        ))
    })
}

fn truncate(s: &str) -> String {
    const MAX: usize = 512;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;
    use std::process::{Child, Command, Stdio};

    // ----- canned replies (captured from QEMU 10.0.2) --------------------

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;

    #[test]
    fn parse_greeting() {
        let g = QmpGreeting::from_value(&serde_json::from_str(GREETING).unwrap()).unwrap();
        assert_eq!(g.version, (10, 0, 2));
        assert_eq!(g.capabilities, vec!["oob".to_owned()]);
        assert!(g.package.contains("10.0.2"));
        let err = QmpGreeting::from_value(&json!({"return": {}})).unwrap_err();
        assert!(matches!(err, QmpError::Greeting(_)), "{err}");
    }

    #[test]
    fn parse_messages() {
        let ev =
            r#"{"timestamp": {"seconds": 1732680000, "microseconds": 123456}, "event": "STOP"}"#;
        let m = Message::from_value(serde_json::from_str(ev).unwrap()).unwrap();
        assert_eq!(
            m,
            Message::Event(QmpEvent {
                event: "STOP".into(),
                data: Value::Null,
                timestamp: Some((1_732_680_000, 123_456)),
            })
        );
        let ev = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "setup"}}"#;
        let Message::Event(e) = Message::from_value(serde_json::from_str(ev).unwrap()).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(e.data["status"], "setup");

        let m = Message::from_value(json!({"return": {}, "id": 7})).unwrap();
        assert_eq!(
            m,
            Message::Return {
                id: Some(json!(7)),
                value: json!({})
            }
        );
        let m = Message::from_value(json!({"id": 3, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}})).unwrap();
        assert_eq!(
            m,
            Message::Error {
                id: Some(json!(3)),
                class: "CommandNotFound".into(),
                desc: "The command foo has not been found".into()
            }
        );
        assert!(matches!(
            Message::from_value(json!({"foo": 1})),
            Err(QmpError::Protocol(_))
        ));
        assert!(matches!(
            Message::from_value(json!([1])),
            Err(QmpError::Protocol(_))
        ));
        assert!(QmpClient::id_matches(None, 5));
        assert!(QmpClient::id_matches(Some(&json!(5)), 5));
        assert!(!QmpClient::id_matches(Some(&json!(4)), 5));
    }

    #[test]
    fn parse_migration_info() {
        // Source side after an x-ignore-shared migration, QEMU 10.0.2.
        let v: Value = serde_json::from_str(
            r#"{"downtime":2,"ram":{"dirty-pages-rate":0,"dirty-sync-count":2,
                "dirty-sync-missed-zero-copy":0,"downtime-bytes":0,"duplicate":78,
                "mbps":232.9696,"multifd-bytes":0,"normal":52,"normal-bytes":212992,
                "page-size":4096,"pages-per-second":0,"postcopy-bytes":0,
                "postcopy-requests":0,"precopy-bytes":214195,"remaining":0,
                "total":532480,"transferred":291212},
                "setup-time":1,"status":"completed","total-time":11}"#,
        )
        .unwrap();
        let i = MigrationInfo::from_value(&v);
        assert_eq!(i.status, MigrationStatus::Completed);
        assert!(i.status.is_terminal());
        assert_eq!(i.total_time_ms, Some(11));
        assert_eq!(i.downtime_ms, Some(2));
        assert_eq!(i.setup_time_ms, Some(1));
        assert_eq!(i.expected_downtime_ms, None);
        assert_eq!(i.ram_transferred_bytes, Some(291_212));
        assert_eq!(i.ram_total_bytes, Some(532_480));
        assert_eq!(i.ram_remaining_bytes, Some(0));
        assert_eq!(i.ram_duplicate_pages, Some(78));
        assert_eq!(i.ram_normal_pages, Some(52));
        assert_eq!(i.ram_normal_bytes, Some(212_992));
        assert_eq!(i.ram_dirty_sync_count, Some(2));
        assert_eq!(i.ram_mbps, Some(232.9696));
        assert_eq!(i.raw["ram"]["page-size"], 4096);

        // The destination side only reports the status.
        let i = MigrationInfo::from_value(&json!({"status": "completed"}));
        assert_eq!(i.status, MigrationStatus::Completed);
        assert_eq!(i.total_time_ms, None);
        assert_eq!(i.ram_transferred_bytes, None);

        // Mid-migration (source), with expected-downtime.
        let i = MigrationInfo::from_value(&json!({"status": "active", "expected-downtime": 300,
            "setup-time": 2, "total-time": 40, "ram": {"transferred": 1000, "remaining": 5}}));
        assert_eq!(i.status, MigrationStatus::Active);
        assert_eq!(i.expected_downtime_ms, Some(300));
        assert_eq!(i.downtime_ms, None);
        assert_eq!(i.ram_remaining_bytes, Some(5));

        // Before any migration QEMU returns {}.
        let i = MigrationInfo::from_value(&json!({}));
        assert_eq!(i.status, MigrationStatus::None);
        assert!(!i.status.is_terminal());
        assert_eq!(i.ram_transferred_bytes, None);

        let i = MigrationInfo::from_value(
            &json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}),
        );
        assert_eq!(i.status, MigrationStatus::Failed);
        assert_eq!(
            i.error_desc.as_deref(),
            Some("Unable to write to socket: Broken pipe")
        );

        for s in [
            "none",
            "setup",
            "active",
            "pre-switchover",
            "device",
            "wait-unplug",
            "postcopy-active",
            "postcopy-paused",
            "cancelling",
            "cancelled",
            "completed",
            "failed",
            "colo",
        ] {
            assert_eq!(MigrationStatus::parse(s).as_str(), s);
        }
        assert_eq!(
            MigrationStatus::parse("colo"),
            MigrationStatus::Other("colo".into())
        );
        let e = QmpError::MigrationFailed {
            status: MigrationStatus::Failed,
            desc: Some("boom".into()),
        };
        assert_eq!(e.to_string(), "migration failed: boom");
    }

    #[test]
    fn parse_fd_and_memory_device_replies() {
        let a: AddFdInfo = parse_reply("add-fd", json!({"fdset-id": 1, "fd": 25})).unwrap();
        assert_eq!(
            a,
            AddFdInfo {
                fdset_id: 1,
                fd: 25
            }
        );
        let s: Vec<FdsetInfo> = parse_reply(
            "query-fdsets",
            json!([{"fds": [{"fd": 25, "opaque": "ram"}, {"fd": 26}], "fdset-id": 1}]),
        )
        .unwrap();
        assert_eq!(s[0].fdset_id, 1);
        assert_eq!(s[0].fds[0].opaque.as_deref(), Some("ram"));
        assert_eq!(s[0].fds[1].opaque, None);
        assert!(matches!(
            parse_reply::<AddFdInfo>("add-fd", json!({})),
            Err(QmpError::Protocol(_))
        ));

        let dimm = MemoryDeviceInfo::from_value(&json!({"type": "dimm", "data": {
            "slot": 0, "node": 0, "addr": 4294967296u64, "memdev": "/objects/mem1",
            "id": "dimm1", "hotpluggable": true, "hotplugged": true, "size": 134217728}}))
        .unwrap();
        assert_eq!(dimm.kind, "dimm");
        assert_eq!(dimm.id.as_deref(), Some("dimm1"));
        assert_eq!(dimm.addr, Some(1 << 32));
        assert_eq!(dimm.size, Some(128 << 20));
        assert_eq!(dimm.memdev.as_deref(), Some("/objects/mem1"));
        let vmem = MemoryDeviceInfo::from_value(&json!({"type": "virtio-mem", "data": {
            "memaddr": 8589934592u64, "requested-size": 0, "size": 0, "max-size": 1073741824,
            "block-size": 2097152, "node": 0, "memdev": "/objects/vm0", "id": "vm0"}}))
        .unwrap();
        assert_eq!(vmem.addr, Some(8 << 30));
        assert_eq!(vmem.data["max-size"], 1 << 30);
        assert!(MemoryDeviceInfo::from_value(&json!({"data": {}})).is_err());
    }

    // ----- fake QMP server over a socketpair ------------------------------

    /// Server side of a fake QMP session.
    struct FakeQemu {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl FakeQemu {
        fn new(s: UnixStream) -> Self {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Self {
                reader: BufReader::new(s.try_clone().unwrap()),
                writer: s,
            }
        }
        fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).unwrap();
            self.writer.write_all(b"\n").unwrap();
        }
        fn recv(&mut self) -> Value {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        }
        /// Expects `command`, answers with `reply` merged with the request id.
        fn expect(&mut self, command: &str, mut reply: Value) -> Value {
            let req = self.recv();
            assert_eq!(req["execute"], command, "{req}");
            reply["id"] = req["id"].clone();
            self.send(&reply.to_string());
            req
        }
        fn handshake(&mut self) {
            self.send(GREETING);
            self.expect("qmp_capabilities", json!({"return": {}}));
        }
    }

    fn fake_session(
        server: impl FnOnce(FakeQemu) + Send + 'static,
    ) -> (QmpClient, thread::JoinHandle<()>) {
        let (c, s) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || {
            let mut f = FakeQemu::new(s);
            f.handshake();
            server(f);
        });
        let client = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap();
        (client, h)
    }

    #[test]
    fn fake_execute_events_and_errors() {
        let (mut q, h) = fake_session(|mut f| {
            // An event before the reply, and a stale reply with another id.
            let req = f.recv();
            assert_eq!(req["execute"], "query-status");
            f.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#);
            f.send(r#"{"return": {"status": "stale"}, "id": 999}"#);
            f.send(
                &json!({"return": {"status": "running", "running": true}, "id": req["id"]})
                    .to_string(),
            );
            let req = f.expect(
                "device_del",
                json!({"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}),
            );
            assert_eq!(req["arguments"], json!({"id": "nope"}));
            let req = f.expect("migrate-set-capabilities", json!({"return": {}}));
            assert_eq!(
                req["arguments"],
                json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
            );
            // An error without id (QEMU's reply to unparsable input).
            f.recv();
            f.send(r#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#);
            f.send(r#"{"event": "DEVICE_DELETED", "data": {"device": "dimm1"}, "timestamp": {"seconds": 3, "microseconds": 4}}"#);
            f.send(r#"{"event": "SHUTDOWN", "data": {"guest": false}}"#);
            f.expect("quit", json!({"return": {}}));
        });
        assert_eq!(q.greeting().version, (10, 0, 2));
        assert_eq!(q.query_status().unwrap(), "running");
        let evs = q.take_events();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, "RESUME");
        assert!(q.take_events().is_empty());

        let err = q.device_del("nope").unwrap_err();
        match &err {
            QmpError::Command {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "device_del");
                assert_eq!(class, "DeviceNotFound");
                assert_eq!(desc, "Device 'nope' not found");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "QMP command \"device_del\" failed: DeviceNotFound: Device 'nope' not found"
        );
        q.migrate_set_capabilities(&[("x-ignore-shared", true)])
            .unwrap();
        assert!(matches!(
            q.execute("stop", None),
            Err(QmpError::Command { ref class, .. }) if class == "GenericError"
        ));
        let ev = q.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap();
        assert_eq!(ev.data["guest"], false);
        assert_eq!(ev.timestamp, None);
        // DEVICE_DELETED arrived first and stays queued.
        let ev = q
            .wait_event("DEVICE_DELETED", Duration::from_secs(5))
            .unwrap();
        assert_eq!(ev.data["device"], "dimm1");
        q.quit().unwrap();
        assert!(matches!(q.query_status(), Err(QmpError::Closed)));
        h.join().unwrap();
    }

    #[test]
    fn fake_timeout_and_closed() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (mut q, h) = fake_session(move |mut f| {
            f.recv(); // never answered
            f.send(r#"{"event": "STOP"}"#);
            rx.recv().unwrap();
            // The late reply to the first command must be skipped.
            f.send(r#"{"return": {"status": "late"}, "id": 2}"#);
            f.expect("query-status", json!({"return": {"status": "paused"}}));
            f.recv();
            // Drop: connection closed without a reply.
        });
        q.set_timeout(Duration::from_millis(200));
        let t0 = Instant::now();
        let err = q.query_status().unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(q.take_events()[0].event, "STOP");
        tx.send(()).unwrap();
        q.set_timeout(Duration::from_secs(5));
        assert_eq!(q.query_status().unwrap(), "paused");
        assert!(matches!(q.query_status(), Err(QmpError::Closed)));
        assert!(matches!(q.cont(), Err(QmpError::Closed)));
        let err = q
            .wait_event("NEVER", Duration::from_millis(10))
            .unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn fake_bad_greeting_and_garbage() {
        let (c, s) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || {
            let mut f = FakeQemu::new(s);
            f.send(r#"{"hello": 1}"#);
        });
        let err = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Greeting(_)), "{err}");
        h.join().unwrap();

        let (c, s) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || FakeQemu::new(s).send("{not json"));
        let err = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Json { .. }), "{err}");
        h.join().unwrap();

        // Silent peer: the greeting read times out.
        let (c, _s) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        let err = QmpClient::from_stream(c, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn fake_execute_with_fd_passes_scm_rights() {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let (c, s) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let want = rustix::fs::fstat(&file).unwrap();
        let h = thread::spawn(move || -> (Value, OwnedFd) {
            let mut f = FakeQemu::new(s.try_clone().unwrap());
            f.handshake();
            // Read the add-fd command with its ancillary data, byte-exact
            // (the BufReader has nothing buffered after the handshake).
            let mut buf = vec![0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let r = recvmsg(&s, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC).unwrap();
            let mut got = None;
            for m in cmsg.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    got = fds.into_iter().next();
                }
            }
            let req: Value = serde_json::from_slice(buf[..r.bytes].trim_ascii()).unwrap();
            f.send(&json!({"return": {"fdset-id": 3, "fd": 42}, "id": req["id"]}).to_string());
            (req, got.expect("no fd received"))
        });
        let mut q = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap();
        let info = q
            .add_fd_opaque(file.as_fd(), Some(3), Some("guest-ram"))
            .unwrap();
        assert_eq!(
            info,
            AddFdInfo {
                fdset_id: 3,
                fd: 42
            }
        );
        let (req, fd) = h.join().unwrap();
        assert_eq!(req["execute"], "add-fd");
        assert_eq!(
            req["arguments"],
            json!({"fdset-id": 3, "opaque": "guest-ram"})
        );
        let got = rustix::fs::fstat(&fd).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (want.st_dev, want.st_ino));
    }

    #[test]
    fn connect_waits_for_socket_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let p = path.clone();
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            let l = UnixListener::bind(&p).unwrap();
            let (s, _) = l.accept().unwrap();
            let mut f = FakeQemu::new(s);
            f.handshake();
            f.expect("query-status", json!({"return": {"status": "prelaunch"}}));
        });
        let mut q = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.query_status().unwrap(), "prelaunch");
        h.join().unwrap();

        let t0 = Instant::now();
        let err = QmpClient::connect(dir.path().join("absent.sock"), Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("absent.sock"), "{err}");
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    // ----- real QEMU ---------------------------------------------------------

    const QEMU: &str = "/usr/bin/qemu-system-x86_64";
    const STEP: Duration = Duration::from_secs(20);

    /// False (test skipped) when QEMU is missing, unless GMEM_E2E=require.
    fn have_qemu() -> bool {
        if Path::new(QEMU).exists() {
            return true;
        }
        if std::env::var("GMEM_E2E").as_deref() == Ok("require") {
            panic!("{QEMU} is missing and GMEM_E2E=require");
        }
        eprintln!("skipping: {QEMU} not found");
        false
    }

    /// A QEMU child that is killed and reaped on drop.
    struct Qemu {
        child: Child,
        qmp_path: PathBuf,
        log_path: PathBuf,
    }

    impl Qemu {
        /// SeaBIOS-only q35 guest with QMP at `<dir>/<name>.qmp`.
        fn spawn(dir: &Path, name: &str, extra: &[&str]) -> Self {
            let qmp_path = dir.join(format!("{name}.qmp"));
            let log_path = dir.join(format!("{name}.log"));
            let log = File::create(&log_path).unwrap();
            let mut cmd = Command::new(QEMU);
            cmd.args([
                "-accel",
                "tcg",
                "-m",
                "64M",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-name", name, "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
            if !extra.iter().any(|a| a.starts_with("q35")) {
                cmd.args(["-machine", "q35"]);
            }
            let child = cmd.spawn().unwrap();
            Self {
                child,
                qmp_path,
                log_path,
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        }

        fn connect(&mut self) -> QmpClient {
            match QmpClient::connect(&self.qmp_path, STEP) {
                Ok(q) => q,
                Err(e) => panic!(
                    "connect to QEMU: {e}; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }

        /// Waits (bounded) for the process to exit.
        fn wait_exit(&mut self, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if self.child.try_wait().unwrap().is_some() {
                    return true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            false
        }
    }

    impl Drop for Qemu {
        fn drop(&mut self) {
            // SIGKILL cannot be blocked, so the wait is short.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Polls `query-status` until it equals `want` (bounded).
    fn wait_status(q: &mut QmpClient, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = q.query_status().unwrap();
            if s == want || Instant::now() >= deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn memfd(size: u64) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("gmemd-qmp-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    }

    /// Path under which another process (QEMU) can open our memfd. Avoids
    /// having to clear CLOEXEC and inherit the fd in the child.
    fn proc_path(fd: &OwnedFd) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
    }

    #[test]
    fn qemu_status_and_add_fd() {
        if !have_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut vm = Qemu::spawn(dir.path(), "vm", &[]);
        let mut q = vm.connect();
        assert_eq!(q.greeting().version.0, 10, "{:?}", q.greeting());
        assert_eq!(wait_status(&mut q, "running", STEP), "running");

        let fd = memfd(1 << 20);
        let a = q.add_fd_opaque(fd.as_fd(), None, Some("gmem")).unwrap();
        let b = q.add_fd(fd.as_fd(), Some(a.fdset_id)).unwrap();
        assert_eq!(b.fdset_id, a.fdset_id);
        assert_ne!(a.fd, b.fd);
        let sets = q.query_fdsets().unwrap();
        let set = sets.iter().find(|s| s.fdset_id == a.fdset_id).unwrap();
        let fds: Vec<i64> = set.fds.iter().map(|f| f.fd).collect();
        assert!(fds.contains(&a.fd) && fds.contains(&b.fd), "{sets:?}");
        assert_eq!(
            set.fds
                .iter()
                .find(|f| f.fd == a.fd)
                .unwrap()
                .opaque
                .as_deref(),
            Some("gmem")
        );
        q.remove_fd(a.fdset_id, Some(b.fd)).unwrap();
        let sets = q.query_fdsets().unwrap();
        let set = sets.iter().find(|s| s.fdset_id == a.fdset_id).unwrap();
        assert_eq!(set.fds.len(), 1, "{sets:?}");

        q.getfd(fd.as_fd(), "ramfd").unwrap();
        q.closefd("ramfd").unwrap();
        let err = q.closefd("ramfd").unwrap_err();
        assert!(matches!(err, QmpError::Command { .. }), "{err}");

        let err = q.execute("no-such-command", None).unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        q.stop().unwrap();
        assert_eq!(q.query_status().unwrap(), "paused");
        q.cont().unwrap();
        assert_eq!(q.query_status().unwrap(), "running");
        let evs: Vec<String> = q.take_events().into_iter().map(|e| e.event).collect();
        assert!(evs.contains(&"STOP".to_owned()), "{evs:?}");

        q.quit().unwrap();
        assert!(vm.wait_exit(STEP), "QEMU did not exit after quit");
    }

    #[test]
    fn qemu_memory_hotplug() {
        if !have_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut vm = Qemu::spawn(dir.path(), "vm", &["-m", "64M,slots=2,maxmem=1G"]);
        let mut q = vm.connect();
        assert!(q.query_memory_devices().unwrap().is_empty());

        let fd = memfd(128 << 20);
        q.object_add(json!({
            "qom-type": "memory-backend-file", "id": "mem1", "size": 128u64 << 20,
            "mem-path": proc_path(&fd), "share": true,
        }))
        .unwrap();
        q.device_add(json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"}))
            .unwrap();
        let devs = q.query_memory_devices().unwrap();
        assert_eq!(devs.len(), 1, "{devs:?}");
        assert_eq!(devs[0].kind, "dimm");
        assert_eq!(devs[0].id.as_deref(), Some("dimm1"));
        assert_eq!(devs[0].size, Some(128 << 20));
        assert_eq!(devs[0].memdev.as_deref(), Some("/objects/mem1"));
        assert!(devs[0].addr.unwrap() >= 1 << 32, "{devs:?}");

        // The backend is in use by the DIMM.
        let err = q.object_del("mem1").unwrap_err();
        assert!(matches!(err, QmpError::Command { .. }), "{err}");
        // An unused backend can be deleted.
        q.object_add(json!({"qom-type": "memory-backend-ram", "id": "mem2", "size": 2u64 << 20}))
            .unwrap();
        q.object_del("mem2").unwrap();
        let err = q.device_del("nope").unwrap_err();
        assert!(matches!(err, QmpError::Command { .. }), "{err}");
    }

    #[test]
    fn qemu_live_migration_x_ignore_shared() {
        if !have_qemu() {
            return;
        }
        const RAM: u64 = 64 << 20;
        const MARK_AT: u64 = 32 << 20;
        const MARK: u64 = 0x6765_6d64_2d71_6d70;
        const FILL_FROM: u64 = 8 << 20;
        let dir = tempfile::tempdir().unwrap();
        let ram = memfd(RAM);
        let backend = format!(
            "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
            proc_path(&ram)
        );
        let common = ["-object", &backend, "-machine", "q35,memory-backend=ram0"];
        let mut src_vm = Qemu::spawn(dir.path(), "src", &common);
        let mut dst_args = common.to_vec();
        dst_args.extend(["-incoming", "defer"]);
        let mut dst_vm = Qemu::spawn(dir.path(), "dst", &dst_args);
        let mut src = src_vm.connect();
        let mut dst = dst_vm.connect();
        assert_eq!(wait_status(&mut src, "running", STEP), "running");
        assert_eq!(dst.query_status().unwrap(), "inmigrate");
        assert_eq!(dst.query_migrate().unwrap().status, MigrationStatus::None);

        for q in [&mut src, &mut dst] {
            q.migrate_set_capabilities(&[("x-ignore-shared", true)])
                .unwrap();
            let caps = q.query_migrate_capabilities().unwrap();
            assert!(
                caps.contains(&("x-ignore-shared".to_owned(), true)),
                "{caps:?}"
            );
            q.migrate_set_parameters(json!({"downtime-limit": 300}))
                .unwrap();
        }
        // Non-zero data in 32 MiB of guest RAM, written by the host through
        // the memfd while the source runs: a migration that copied guest RAM
        // would send >= 32 MiB (zero pages are almost free, so an idle
        // SeaBIOS guest alone would not tell). The destination must see the
        // marker without it being migrated.
        let chunk = vec![0xa5u8; 1 << 20];
        for off in (FILL_FROM..FILL_FROM + (32 << 20)).step_by(chunk.len()) {
            rustix::io::pwrite(&ram, &chunk, off).unwrap();
        }
        rustix::io::pwrite(&ram, &MARK.to_le_bytes(), MARK_AT).unwrap();

        let uri = format!("unix:{}", dir.path().join("mig.sock").display());
        dst.migrate_incoming(&uri).unwrap();
        let t0 = Instant::now();
        src.migrate(&uri).unwrap();
        let info = match src.wait_migration(STEP) {
            Ok(i) => i,
            Err(e) => panic!(
                "migration: {e}\nsrc log:\n{}\ndst log:\n{}",
                src_vm.log(),
                dst_vm.log()
            ),
        };
        let wall = t0.elapsed();
        let dst_info = dst.wait_migration(STEP).unwrap();
        eprintln!(
            "migration: wall {wall:?}, total-time {:?} ms, downtime {:?} ms, setup {:?} ms, \
             ram transferred {:?} B (total {:?} B, normal pages {:?}, zero pages {:?}); dst {:?}",
            info.total_time_ms,
            info.downtime_ms,
            info.setup_time_ms,
            info.ram_transferred_bytes,
            info.ram_total_bytes,
            info.ram_normal_pages,
            info.ram_duplicate_pages,
            dst_info.status,
        );
        eprintln!(
            "query-migrate (src): {}\nquery-migrate (dst): {}",
            info.raw, dst_info.raw
        );
        assert!(info.total_time_ms.is_some() && info.downtime_ms.is_some());
        let transferred = info.ram_transferred_bytes.unwrap();
        assert!(transferred < 4 << 20, "{transferred} bytes transferred");
        // Guest RAM itself was not counted in the RAM to migrate.
        assert!(info.ram_total_bytes.unwrap() < RAM, "{:?}", info.raw);

        assert_eq!(wait_status(&mut dst, "running", STEP), "running");
        assert_eq!(src.query_status().unwrap(), "postmigrate");
        let out = dst
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": format!("xp /1xg {MARK_AT:#x}")})),
            )
            .unwrap();
        let out = out.as_str().unwrap().to_owned();
        assert!(out.contains(&format!("{MARK:#x}")), "{out}");

        src.quit().unwrap();
        dst.quit().unwrap();
        assert!(src_vm.wait_exit(STEP) && dst_vm.wait_exit(STEP));
    }
}
