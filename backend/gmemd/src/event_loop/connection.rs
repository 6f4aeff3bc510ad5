//! One client connection: its socket, frames in and out, its session, and
//! serving it on a readiness event.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use epoll::Events;
use gmem_protocol::conn::{FrameReader, FrameWriter};
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
}

impl Connection {
    pub(super) fn new(stream: UnixStream, session: Session) -> Self {
        Connection {
            stream,
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
            session,
            closing: false,
            armed: read_events(),
            accepted: Instant::now(),
        }
    }
}

pub(super) fn read_events() -> Events {
    Events::EPOLLIN | Events::EPOLLRDHUP
}

/// Serves one readiness event of a connection: reads and serves requests
/// while its replies flow; `Err(reason)` closes it. Leases its requests
/// ended are added to `ended`, and serving stops there.
pub(super) fn serve_connection(
    conn: &mut Connection,
    service: &mut Service,
    flags: Events,
    ended: &mut Vec<LeaseId>,
) -> Result<(), String> {
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
        match conn.reader.read_frame(fd) {
            Ok(Some(frame)) => {
                let served = service.serve(&mut conn.session, frame);
                conn.writer
                    .push(served.reply.header, &served.reply.payload, served.reply.fds);
                if served.close {
                    conn.closing = true;
                    return Ok(());
                }
                if !served.ended.is_empty() {
                    ended.extend(served.ended);
                    return Ok(());
                }
                // Stop reading while replies are queued: backpressure.
                if !conn
                    .writer
                    .flush(fd)
                    .map_err(|e| format!("send failed: {e}"))?
                {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_hangup() => return Err("client closed the connection".to_owned()),
            Err(e) => return Err(format!("protocol error: {}", crate::error_chain(&e))),
        }
    }
    Ok(())
}
