//! Moving framed messages and their fds over a Unix stream socket.
//!
//! This module knows the frame layout (header, payload, SCM_RIGHTS fds) but
//! not what a request means. It works on blocking and non-blocking sockets:
//! a non-blocking read that would block returns `Ok(None)` and keeps the
//! partial message for the next call.
//!
//! A daemon reads with [`FrameReader::read_whole`] instead: it takes nothing
//! from the socket until a whole message is queued there (module `whole`),
//! so a daemon killed at any instant leaves the stream in step for the
//! process that inherits the socket.
//!
//! Message boundaries matter on `SOCK_STREAM`: fds ride with the first byte
//! of the `sendmsg` that carried them, so every `recvmsg` here asks for no
//! more than the rest of the current message and can never swallow the fds
//! of the next one.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::wire::{Header, WireError, HEADER_SIZE, MAX_FDS};

mod whole;

pub use whole::{peek_queued, Queued, WholeRead};

/// Errors of the framing layer. Every one of them ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer closed the socket between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the socket in the middle of a message.
    #[error("peer closed the connection after {received} bytes of a message")]
    Truncated {
        /// Bytes of the unfinished message that had arrived.
        received: usize,
    },
    /// The header is invalid; the stream cannot be resynchronized.
    #[error("malformed header")]
    BadHeader(#[source] WireError),
    /// Fds arrived with fewer bytes than a whole header (the sender split
    /// the header of a message that carries fds across `sendmsg` calls):
    /// [`FrameReader::read_whole`] cannot check the header without taking
    /// part of the message. PROTOCOL.md §5.1 forbids it.
    #[error("fds arrived with only {received} bytes of a message header")]
    SplitHeader {
        /// Header bytes that came with the fds.
        received: usize,
    },
    /// More than [`MAX_FDS`] fds arrived with one message, or the kernel cut
    /// the fd data (`MSG_CTRUNC`). The received fds are closed.
    #[error("a message carried more than {MAX_FDS} fds")]
    TooManyFds,
    /// The socket failed.
    #[error("socket I/O failed")]
    Io(#[source] io::Error),
}

impl ConnError {
    /// Whether the peer simply went away (not a protocol violation).
    pub fn is_hangup(&self) -> bool {
        matches!(self, ConnError::Closed)
            || matches!(self, ConnError::Io(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
    }
}

/// A complete message as received.
#[derive(Debug)]
pub struct Frame {
    /// The validated header.
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// Fds that came with the message, close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Reassembles frames from a socket, one message at a time.
#[derive(Debug, Default)]
pub struct FrameReader {
    header_bytes: [u8; HEADER_SIZE],
    header_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    payload_len: usize,
    fds: Vec<OwnedFd>,
    /// Whether bytes followed the last message [`Self::read_whole`] took.
    more_queued: bool,
}

impl FrameReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// After [`Self::read_whole`] took a message: whether more bytes were
    /// already queued behind it (read again at once), or none, as far as
    /// one look could tell (wait for readiness instead of asking again).
    pub fn more_queued(&self) -> bool {
        self.more_queued
    }

    /// Whether no part of a message is buffered.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.fds.is_empty()
    }

    /// Reads until one whole frame has arrived.
    ///
    /// Returns `Ok(None)` if a non-blocking socket has no more data for now.
    ///
    /// # Errors
    /// [`ConnError`]; the connection must be closed after any of them.
    pub fn read_frame(&mut self, socket: BorrowedFd<'_>) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(header) = self.header {
                if self.payload_len == header.size as usize {
                    return Ok(Some(self.take_frame(header)));
                }
            }
            let received_before = self.header_len + self.payload_len;
            let buf = match self.header {
                None => &mut self.header_bytes[self.header_len..],
                Some(_) => &mut self.payload[self.payload_len..],
            };
            let n = match recv_chunk(socket, buf, &mut self.fds, RecvFlags::empty()) {
                Ok(n) => n,
                Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(if received_before == 0 {
                    ConnError::Closed
                } else {
                    ConnError::Truncated {
                        received: received_before,
                    }
                });
            }
            match self.header {
                None => {
                    self.header_len += n;
                    if self.header_len == HEADER_SIZE {
                        let header =
                            Header::from_bytes(&self.header_bytes).map_err(ConnError::BadHeader)?;
                        // Bounded by MAX_PAYLOAD: the header check comes first.
                        self.payload = vec![0; header.size as usize];
                        self.payload_len = 0;
                        self.header = Some(header);
                    }
                }
                Some(_) => self.payload_len += n,
            }
        }
    }

    fn take_frame(&mut self, header: Header) -> Frame {
        self.header = None;
        self.header_len = 0;
        self.payload_len = 0;
        Frame {
            header,
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        }
    }
}

/// One `recvmsg` into `buf` with `flags` (plus `MSG_CMSG_CLOEXEC`);
/// received fds are appended to `fds` as close-on-exec `OwnedFd`s.
fn recv_chunk(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    flags: RecvFlags,
) -> Result<usize, ConnError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg(
            socket,
            &mut iov,
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(ConnError::Io(e.into())),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    // A cut control message means fds were lost: the message can't be trusted.
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
        fds.clear();
        return Err(ConnError::TooManyFds);
    }
    Ok(msg.bytes)
}

/// One `sendmsg` of `bytes` with `fds` attached; returns bytes sent.
/// `MSG_NOSIGNAL`: a dead peer gives `EPIPE`, never `SIGPIPE`.
fn send_chunk(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds exceed the {MAX_FDS}-fd limit", fds.len()),
        ));
    }
    loop {
        match sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends a whole message on a blocking socket, fds with its first byte.
///
/// # Errors
/// [`ConnError::Io`] if the socket fails.
pub fn send_message(
    socket: BorrowedFd<'_>,
    header: Header,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), ConnError> {
    let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(payload);
    let mut sent = send_chunk(socket, &bytes, fds).map_err(ConnError::Io)?;
    while sent < bytes.len() {
        sent += send_chunk(socket, &bytes[sent..], &[]).map_err(ConnError::Io)?;
    }
    Ok(())
}

#[derive(Debug)]
struct OutFrame {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    sent: usize,
}

/// Queues outgoing frames for a non-blocking socket.
#[derive(Debug, Default)]
pub struct FrameWriter {
    queue: VecDeque<OutFrame>,
    pending: usize,
}

impl FrameWriter {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one message; `fds` are closed once sent (or when dropped).
    pub fn push(&mut self, header: Header, payload: &[u8], fds: Vec<OwnedFd>) {
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&header.to_bytes());
        bytes.extend_from_slice(payload);
        self.pending += bytes.len();
        self.queue.push_back(OutFrame {
            bytes,
            fds,
            sent: 0,
        });
    }

    /// Bytes queued and not yet sent.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Whether everything has been sent.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends as much as the socket takes. Returns `true` once the queue is empty.
    ///
    /// # Errors
    /// [`ConnError::Io`] if the socket fails.
    pub fn flush(&mut self, socket: BorrowedFd<'_>) -> Result<bool, ConnError> {
        while let Some(front) = self.queue.front_mut() {
            let fds: Vec<BorrowedFd<'_>> = front.fds.iter().map(AsFd::as_fd).collect();
            match send_chunk(socket, &front.bytes[front.sent..], &fds) {
                Ok(n) => {
                    drop(fds);
                    // The kernel holds its own references once any byte went out.
                    front.fds.clear();
                    front.sent += n;
                    self.pending -= n;
                    if front.sent == front.bytes.len() {
                        self.queue.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::wire::Request;

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn frame_with_fd_round_trips() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd();
        send_message(
            a.as_fd(),
            Header::request(Request::Deposit, 3),
            &[1, 2, 3],
            &[fd.as_fd()],
        )
        .unwrap();
        let frame = FrameReader::new().read_frame(b.as_fd()).unwrap().unwrap();
        assert_eq!(frame.header.code, Request::Deposit.code());
        assert_eq!(frame.payload, vec![1, 2, 3]);
        assert_eq!(frame.fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&frame.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn fds_of_the_next_message_stay_with_it() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd();
        send_message(a.as_fd(), Header::request(Request::Status, 2), &[0, 0], &[]).unwrap();
        send_message(
            a.as_fd(),
            Header::request(Request::Deposit, 0),
            &[],
            &[fd.as_fd()],
        )
        .unwrap();
        let mut reader = FrameReader::new();
        let first = reader.read_frame(b.as_fd()).unwrap().unwrap();
        assert!(first.fds.is_empty());
        let second = reader.read_frame(b.as_fd()).unwrap().unwrap();
        assert_eq!(second.fds.len(), 1);
    }

    #[test]
    fn partial_message_then_eof_is_truncated() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&Header::request(Request::Status, 8).to_bytes()[..5])
            .unwrap();
        drop(a);
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(err, ConnError::Truncated { received: 5 }));
    }

    #[test]
    fn eof_between_messages_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(err.is_hangup());
    }

    #[test]
    fn nonblocking_read_resumes_where_it_stopped() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let bytes = Header::request(Request::Unbind, 8).to_bytes();
        let mut reader = FrameReader::new();
        a.write_all(&bytes[..7]).unwrap();
        assert!(reader.read_frame(b.as_fd()).unwrap().is_none());
        a.write_all(&bytes[7..]).unwrap();
        a.write_all(&[9; 4]).unwrap();
        assert!(reader.read_frame(b.as_fd()).unwrap().is_none());
        a.write_all(&[9; 4]).unwrap();
        let frame = reader.read_frame(b.as_fd()).unwrap().unwrap();
        assert_eq!(frame.payload, vec![9; 8]);
        assert!(reader.is_idle());
    }

    #[test]
    fn oversized_header_is_rejected_before_allocating() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut bytes = Header::request(Request::Status, 8).to_bytes();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        a.write_all(&bytes).unwrap();
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(
            err,
            ConnError::BadHeader(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn too_many_fds_close_the_message() {
        let (a, b) = UnixStream::pair().unwrap();
        // Nine fds exceed both MAX_FDS and the receive buffer: the kernel cuts
        // the control data, which must be reported, not silently ignored.
        let files: Vec<OwnedFd> = (0..9).map(|_| memfd()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(9))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let bytes = Header::request(Request::Status, 0).to_bytes();
        sendmsg(
            a.as_fd(),
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(err, ConnError::TooManyFds));
    }

    #[test]
    fn writer_flushes_and_reports_backpressure() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut writer = FrameWriter::new();
        let payload = vec![7u8; 4096];
        // Queue far more than a socket buffer holds.
        for _ in 0..512 {
            writer.push(Header::reply(8, payload.len()), &payload, Vec::new());
        }
        assert!(!writer.flush(a.as_fd()).unwrap());
        assert!(writer.pending_bytes() > 0);
        let mut reader = FrameReader::new();
        let mut got = 0;
        while got < 512 {
            if reader.read_frame(b.as_fd()).unwrap().is_some() {
                got += 1;
            }
            let _ = writer.flush(a.as_fd()).unwrap();
        }
        assert!(writer.is_empty());
    }
}
