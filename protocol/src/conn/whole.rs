//! Whole-message reads: nothing is taken from the socket until a whole
//! message is queued there, and then exactly that message is taken.
//!
//! A daemon that reads a message piece by piece ([`FrameReader::read_frame`])
//! holds the start of it in its memory until the rest arrives. Killed then,
//! it takes those bytes with it, and the process that inherits the socket
//! starts reading in the middle of a message. [`FrameReader::read_whole`]
//! looks first (`MSG_PEEK` of the header, `FIONREAD` for the rest) and takes
//! the message only once all of it is queued, with `MSG_DONTWAIT` reads that
//! find every byte already there: killed at any instant, the daemon leaves
//! either the whole message or none of it in the socket.
//!
//! The kernel delivers a message's fds with the `recvmsg` that reads the
//! first byte of the `sendmsg` that carried them, and ends that `recvmsg`
//! after those bytes. A message sent with one `sendmsg` (PROTOCOL.md §5.1,
//! §12) is taken with one `recvmsg`; one whose sender split it after the
//! header takes a few, back to back, all of their bytes already queued.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{recv, RecvFlags};

use super::{recv_chunk, ConnError, Frame, FrameReader};
use crate::wire::{Header, HEADER_SIZE, MAX_PAYLOAD};

/// What [`FrameReader::read_whole`] found.
#[derive(Debug)]
pub enum WholeRead {
    /// A whole message, taken from the socket with its fds.
    Frame(Frame),
    /// Part of a message is queued; nothing was taken. Call again when more
    /// has arrived.
    Partial,
    /// Nothing is queued.
    Empty,
}

/// What a socket holds at its read position, seen without taking anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing.
    Empty,
    /// The first `bytes` of a message whose rest has not arrived yet.
    Partial {
        /// Bytes of the message queued so far.
        bytes: usize,
    },
    /// A whole message with this (validated) header, perhaps more after it.
    Whole(Header),
}

/// Looks at what `socket` holds without taking anything, and never blocks
/// (whatever the socket's mode).
///
/// A daemon taking over a connection after a restart uses it to tell the
/// client whether a request of its is still unread (`pending` of the
/// restart notice, [`crate::server::encode_restart_notice`]).
///
/// # Errors
/// As [`FrameReader::read_whole`]: [`ConnError::Closed`] when the peer hung
/// up and nothing is queued, [`ConnError::Truncated`] when it hung up after
/// part of a message, [`ConnError::BadHeader`],
/// [`ConnError::SplitHeader`], [`ConnError::Io`].
pub fn peek_queued(socket: BorrowedFd<'_>) -> Result<Queued, ConnError> {
    // Hang-up first: a peer that hung up has queued all it ever will, so a
    // message found short after that will never be whole.
    let hung_up = peer_hung_up(socket)?;
    let mut head = [0u8; HEADER_SIZE];
    let peeked = loop {
        match recv(socket, &mut head[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => break n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(Queued::Empty),
            Err(e) => return Err(ConnError::Io(e.into())),
        }
    };
    if peeked == 0 {
        return Err(ConnError::Closed);
    }
    let queued = queued_bytes(socket)?.max(peeked);
    let unfinished = |bytes: usize| {
        if hung_up {
            Err(ConnError::Truncated { received: bytes })
        } else {
            Ok(Queued::Partial { bytes })
        }
    };
    if peeked < HEADER_SIZE {
        // A peek ends after bytes that carry fds: if more is queued, the
        // fds came with part of a header.
        if queued > peeked {
            return Err(ConnError::SplitHeader { received: peeked });
        }
        return unfinished(queued);
    }
    let header = Header::from_bytes(&head).map_err(ConnError::BadHeader)?;
    if queued >= message_len(header) {
        Ok(Queued::Whole(header))
    } else {
        unfinished(queued)
    }
}

impl FrameReader {
    /// Takes one whole message from the socket if all of it is queued,
    /// else nothing; never blocks (whatever the socket's mode). What a
    /// daemon reads with, so that dying at any instant never leaves half a
    /// message taken (module `whole`).
    ///
    /// With level-triggered readiness, a socket holding a
    /// [`WholeRead::Partial`] message stays readable until the rest
    /// arrives: wait for more with edge-triggered readiness (`EPOLLET`), or
    /// stop polling that socket for input for a while.
    ///
    /// If an earlier [`FrameReader::read_frame`] left part of a message
    /// buffered here, that message is finished the way `read_frame` reads
    /// (one piece at a time) before anything else.
    ///
    /// # Errors
    /// The header checks of [`FrameReader::read_frame`]
    /// ([`ConnError::BadHeader`]), [`ConnError::TooManyFds`],
    /// [`ConnError::Closed`] when the peer hung up with nothing queued,
    /// [`ConnError::Truncated`] when it hung up after part of a message,
    /// [`ConnError::SplitHeader`], [`ConnError::Io`]. The connection must be
    /// closed after any of them.
    pub fn read_whole(&mut self, socket: BorrowedFd<'_>) -> Result<WholeRead, ConnError> {
        if !self.is_idle() {
            return Ok(match self.read_frame(socket)? {
                Some(frame) => WholeRead::Frame(frame),
                None => WholeRead::Partial,
            });
        }
        let look = look(socket)?;
        self.more_queued = look.more;
        match look.queued {
            Queued::Empty => Ok(WholeRead::Empty),
            Queued::Partial { .. } => Ok(WholeRead::Partial),
            Queued::Whole(header) => take_whole(socket, header).map(WholeRead::Frame),
        }
    }
}

/// What [`look`] found.
struct Look {
    queued: Queued,
    /// Bytes follow the whole message (or may: the slow look cannot tell).
    more: bool,
}

/// [`peek_queued`] with one system call where it can: a single peek of up
/// to a largest message finds the common case, a whole message (and
/// whether anything follows it). Anything short of that (part of a
/// message, or a peek that ended at bytes carrying fds) is looked at the
/// careful way, hang-up first.
fn look(socket: BorrowedFd<'_>) -> Result<Look, ConnError> {
    let mut buf = [0u8; HEADER_SIZE + MAX_PAYLOAD + 1];
    let peeked = loop {
        match recv(socket, &mut buf[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => break n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                return Ok(Look {
                    queued: Queued::Empty,
                    more: false,
                })
            }
            Err(e) => return Err(ConnError::Io(e.into())),
        }
    };
    if peeked == 0 {
        return Err(ConnError::Closed);
    }
    if peeked >= HEADER_SIZE {
        let head: &[u8; HEADER_SIZE] = buf[..HEADER_SIZE].try_into().expect("HEADER_SIZE bytes");
        let header = Header::from_bytes(head).map_err(ConnError::BadHeader)?;
        let len = message_len(header);
        if peeked >= len {
            return Ok(Look {
                queued: Queued::Whole(header),
                more: peeked > len,
            });
        }
    }
    Ok(Look {
        queued: peek_queued(socket)?,
        more: true,
    })
}

/// Bytes of a message with `header`, header included.
fn message_len(header: Header) -> usize {
    HEADER_SIZE + header.size as usize
}

/// Takes the message `header` announced, all of which is queued.
fn take_whole(socket: BorrowedFd<'_>, header: Header) -> Result<Frame, ConnError> {
    let len = message_len(header);
    let mut bytes = vec![0u8; len];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut taken = 0;
    while taken < len {
        match recv_chunk(socket, &mut bytes[taken..], &mut fds, RecvFlags::DONTWAIT) {
            Ok(0) => return Err(vanished(taken)),
            Ok(n) => taken += n,
            Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(vanished(taken))
            }
            Err(e) => return Err(e),
        }
    }
    let head: &[u8; HEADER_SIZE] = bytes[..HEADER_SIZE]
        .try_into()
        .expect("a message is at least a header");
    // The bytes taken are those peeked unless someone else reads the socket.
    if Header::from_bytes(head).ok() != Some(header) {
        return Err(ConnError::Io(io::Error::other(
            "the message taken differs from the one peeked (another reader of the socket?)",
        )));
    }
    let payload = bytes.split_off(HEADER_SIZE);
    Ok(Frame {
        header,
        payload,
        fds,
    })
}

/// Queued bytes went missing between the look and the take: another reader
/// of the socket, or out-of-band data. Part of a message is gone, so the
/// connection cannot go on.
fn vanished(taken: usize) -> ConnError {
    ConnError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("queued message bytes vanished after {taken} were taken"),
    ))
}

/// Whether the peer has hung up or shut down its writing side.
fn peer_hung_up(socket: BorrowedFd<'_>) -> Result<bool, ConnError> {
    let mut fds = [PollFd::new(&socket, PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match poll(&mut fds, Some(&now)) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(ConnError::Io(e.into())),
        }
    }
    Ok(fds[0]
        .revents()
        .intersects(PollFlags::RDHUP | PollFlags::HUP))
}

/// Bytes queued for reading (`FIONREAD`).
fn queued_bytes(socket: BorrowedFd<'_>) -> Result<usize, ConnError> {
    let n = rustix::io::ioctl_fionread(socket).map_err(|e| ConnError::Io(e.into()))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests;
