//! One client connection: its socket, frames in and out, its session, and
//! serving it on a readiness event.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use epoll::Events;
use gmem_protocol::conn::{FrameReader, FrameWriter, WholeRead};
use gmem_protocol::wire::LeaseId;

use super::FRAMES_PER_WAKEUP;
use crate::service::{Service, Session};

/// A client connection.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) stream: UnixStream,
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) session: Session,
    /// Reply sent that ends the connection once flushed.
    pub(super) closing: bool,
    /// The events epoll waits for on it now.
    pub(super) armed: Events,
    /// When it was accepted (the HELLO deadline counts from here).
    pub(super) accepted: Instant,
    /// Part of a message is queued: wait for more edge-triggered, so a
    /// client that stalls mid-message costs nothing.
    pub(super) partial: bool,
    /// Since when part of a message has waited. A message sent in many
    /// tiny pieces can fill the socket buffer before it is whole; after
    /// [`STALLED_AFTER`] gmemd takes what is there (that message alone then
    /// loses the whole-message guarantee across a restart).
    pub(super) partial_since: Option<Instant>,
}

/// How long part of a message waits before gmemd reads it piecewise.
pub(super) const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Connection {
    pub(super) fn new(stream: UnixStream, session: Session) -> Self {
        Connection {
            stream,
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
            session,
            closing: false,
            armed: read_events(false),
            accepted: Instant::now(),
            partial: false,
            partial_since: None,
        }
    }
}

/// What epoll waits for on a connection that may send: level-triggered,
/// or edge-triggered while part of a message is queued (gmemd takes only
/// whole messages, so a restart never finds a stream out of step).
pub(super) fn read_events(partial: bool) -> Events {
    if partial {
        Events::EPOLLIN | Events::EPOLLRDHUP | Events::EPOLLET
    } else {
        Events::EPOLLIN | Events::EPOLLRDHUP
    }
}

/// Serves one readiness event of a connection: reads and serves requests
/// while its replies flow; `Err(reason)` closes it. Leases its requests
/// ended are added to `ended`, and serving stops there.
pub(super) fn serve_connection(
    conn: &mut Connection,
    service: &mut Service,
    flags: Events,
    ended: &mut Vec<LeaseId>,
    restart: &mut bool,
) -> Result<(), String> {
    let stalled = conn
        .partial_since
        .is_some_and(|since| since.elapsed() >= STALLED_AFTER);
    let fd = conn.stream.as_fd();
    if conn.closing || !conn.writer.is_empty() {
        if flags.intersects(Events::EPOLLERR | Events::EPOLLHUP | Events::EPOLLRDHUP)
            && !conn.closing
        {
            return Err("client hung up with replies unread".to_owned());
        }
        return Ok(());
    }
    for _ in 0..FRAMES_PER_WAKEUP {
        let read = if stalled {
            conn.reader
                .read_frame(fd)
                .map(|f| f.map_or(WholeRead::Partial, WholeRead::Frame))
        } else {
            conn.reader.read_whole(fd)
        };
        match read {
            Ok(WholeRead::Frame(frame)) => {
                conn.partial = false;
                conn.partial_since = None;
                let served = service.serve(&mut conn.session, frame, Some(fd));
                conn.writer
                    .push(served.reply.header, &served.reply.payload, served.reply.fds);
                if served.close {
                    conn.closing = true;
                    return Ok(());
                }
                if served.restart {
                    *restart = true;
                }
                if !served.ended.is_empty() {
                    ended.extend(served.ended);
                    return Ok(());
                }
                // The reply goes out at once (a client is woken when gmemd
                // takes its request and again by the reply; the two cost one
                // wakeup only while they come together: holding replies to
                // the wakeup's end measured 10-20 % slower). Stop reading
                // while replies are queued: backpressure.
                if !conn
                    .writer
                    .flush(fd)
                    .map_err(|e| format!("send failed: {e}"))?
                {
                    return Ok(());
                }
                // Nothing behind it: the next request is epoll's to report
                // (level-triggered), not worth a look that finds nothing.
                if !stalled && !conn.reader.more_queued() {
                    return Ok(());
                }
            }
            Ok(WholeRead::Partial) => {
                conn.partial = true;
                conn.partial_since.get_or_insert_with(Instant::now);
                return Ok(());
            }
            Ok(WholeRead::Empty) => {
                conn.partial = false;
                conn.partial_since = None;
                return Ok(());
            }
            Err(e) if e.is_hangup() => return Err("client closed the connection".to_owned()),
            Err(e) => return Err(format!("protocol error: {}", crate::error_chain(&e))),
        }
    }
    Ok(())
}
