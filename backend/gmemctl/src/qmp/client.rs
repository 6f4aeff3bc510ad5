//! The QMP session: connecting and the greeting, framing (one JSON message
//! per line), commands and replies, the event queue, fd passing, deadlines.
//!
//! The typed command wrappers (`add_fd`, `migrate`, `query_status`, ...) are
//! a second `impl QmpClient` block in `commands.rs`.

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
use serde_json::{Map, Value};

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
    /// Set once QEMU closed the connection (or after `quit`, in `commands.rs`).
    pub(super) closed: bool,
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
}
