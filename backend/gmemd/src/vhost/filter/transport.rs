//! Moving whole vhost-user messages and their fds over a stream socket,
//! without knowing what a request means.
//!
//! One message is read as its header, then exactly its payload, so a read
//! never takes bytes (or fds) of the next message. The fds of every
//! `recvmsg` that makes up the message are kept: QEMU sends header,
//! payload and fds in one `sendmsg`, so they come with the header, but a
//! split send is not a reason to lose them.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use thiserror::Error;

use super::wire::{Header, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD};

/// Moving a message failed.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("recvmsg failed")]
    Receive(#[source] io::Error),
    #[error("sendmsg failed")]
    Send(#[source] io::Error),
    /// The peer closed the connection inside a message.
    #[error("connection closed {got} bytes into a message of {want} bytes")]
    Truncated { got: usize, want: usize },
    /// The header announces a payload larger than any valid message.
    #[error("message announces a payload of {size} bytes, more than {MAX_PAYLOAD}")]
    Oversized { size: usize },
    /// More fds arrived than any message carries; the kernel closed those
    /// that did not fit and the rest are closed on return.
    #[error("more than {MAX_FDS} fds attached to one message")]
    TooManyFds,
}

impl TransportError {
    /// Whether this is the peer going away rather than it breaking the
    /// protocol (a truncated message is both; the caller decides).
    pub fn is_disconnect(&self) -> bool {
        match self {
            Self::Receive(e) | Self::Send(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotConnected
            ),
            Self::Truncated { .. } => true,
            Self::Oversized { .. } | Self::TooManyFds => false,
        }
    }
}

/// One whole message: header and payload bytes, and the fds that came
/// with them.
#[derive(Debug)]
pub(super) struct Message {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    pub fn header(&self) -> Header {
        let mut raw = [0; HEADER_SIZE];
        raw.copy_from_slice(&self.bytes[..HEADER_SIZE]);
        Header::parse(&raw)
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_SIZE..]
    }
}

/// Reads one message; `None` when the peer closed the connection between
/// messages (or the socket was shut down for reading).
pub(super) fn recv_message(socket: impl AsFd) -> Result<Option<Message>, TransportError> {
    let socket = socket.as_fd();
    let mut bytes = vec![0; HEADER_SIZE];
    let mut fds = Vec::new();
    let got = recv_exact(socket, &mut bytes, &mut fds)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_SIZE {
        return Err(TransportError::Truncated {
            got,
            want: HEADER_SIZE,
        });
    }
    let mut raw = [0; HEADER_SIZE];
    raw.copy_from_slice(&bytes);
    let size = Header::parse(&raw).size as usize;
    // Checked before allocating: the size is the peer's word.
    if size > MAX_PAYLOAD {
        return Err(TransportError::Oversized { size });
    }
    bytes.resize(HEADER_SIZE + size, 0);
    let got = recv_exact(socket, &mut bytes[HEADER_SIZE..], &mut fds)?;
    if got < size {
        return Err(TransportError::Truncated {
            got: HEADER_SIZE + got,
            want: HEADER_SIZE + size,
        });
    }
    Ok(Some(Message { bytes, fds }))
}

/// Fills `buf` unless the peer closes first; returns the bytes read.
/// Received fds are appended to `fds`.
fn recv_exact(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, TransportError> {
    let mut filled = 0;
    while filled < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[filled..])];
        let received = match recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(received) => received,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(TransportError::Receive(e.into())),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
            return Err(TransportError::TooManyFds);
        }
        if received.bytes == 0 {
            break;
        }
        filled += received.bytes;
    }
    Ok(filled)
}

/// Writes all of `bytes`, with `fds` attached to the first byte (a
/// receiver gets them with the message's header).
pub(super) fn send_message(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransportError> {
    if fds.len() > MAX_FDS {
        return Err(TransportError::TooManyFds);
    }
    let socket = socket.as_fd();
    let mut sent = 0;
    while sent < bytes.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() {
            // Cannot fail: the buffer has room for MAX_FDS, checked above.
            let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
            debug_assert!(pushed);
        }
        // NOSIGNAL: a peer that went away is EPIPE, not a SIGPIPE for gmemd.
        match sendmsg(
            socket,
            &[IoSlice::new(&bytes[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(0) => return Err(TransportError::Send(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(TransportError::Send(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use crate::vhost::filter::wire::tests::message;

    fn pipe_fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .flat_map(|_| {
                let (r, w) = rustix::pipe::pipe().unwrap();
                [r, w]
            })
            .take(n)
            .collect()
    }

    fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
        fds.iter().map(AsFd::as_fd).collect()
    }

    #[test]
    fn message_and_fds_round_trip_without_eating_the_next() {
        let (a, b) = UnixStream::pair().unwrap();
        let first = message(5, 1, &[7; 40]);
        let second = message(1, 1, &[]);
        let fds = pipe_fds(3);
        send_message(&a, &first, &borrow(&fds)).unwrap();
        send_message(&a, &second, &[]).unwrap();
        let got = recv_message(&b).unwrap().unwrap();
        assert_eq!(got.bytes, first);
        assert_eq!(got.fds.len(), 3);
        let got = recv_message(&b).unwrap().unwrap();
        assert_eq!(got.bytes, second);
        assert!(got.fds.is_empty());
        drop(a);
        assert!(recv_message(&b).unwrap().is_none());
    }

    #[test]
    fn a_message_split_over_writes_is_reassembled() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let whole = message(9, 1, &[3; 100]);
        let fds = pipe_fds(1);
        // The fd rides on the second piece; it is still the message's.
        a.write_all(&whole[..5]).unwrap();
        send_message(&a, &whole[5..50], &borrow(&fds)).unwrap();
        a.write_all(&whole[50..]).unwrap();
        let got = recv_message(&b).unwrap().unwrap();
        assert_eq!(got.bytes, whole);
        assert_eq!(got.fds.len(), 1);
    }

    #[test]
    fn eof_inside_a_message_is_truncated() {
        for cut in [3, HEADER_SIZE, HEADER_SIZE + 10] {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(&message(9, 1, &[3; 20])[..cut]).unwrap();
            drop(a);
            let err = recv_message(&b).unwrap_err();
            assert!(
                matches!(err, TransportError::Truncated { got, .. } if got == cut),
                "{err:?}"
            );
        }
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut header = message(9, 1, &[]);
        header[8..12].copy_from_slice(&u32::try_from(MAX_PAYLOAD + 1).unwrap().to_le_bytes());
        a.write_all(&header).unwrap();
        assert!(matches!(
            recv_message(&b),
            Err(TransportError::Oversized { size }) if size == MAX_PAYLOAD + 1
        ));
        // The largest valid payload is fine.
        let big = message(9, 1, &vec![0; MAX_PAYLOAD]);
        a.write_all(&big).unwrap();
        assert_eq!(recv_message(&b).unwrap().unwrap().bytes, big);
    }

    #[test]
    fn too_many_fds_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds = pipe_fds(MAX_FDS + 1);
        // Bypass send_message's own limit to play a hostile sender.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let borrowed = borrow(&fds);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let bytes = message(1, 1, &[]);
        sendmsg(
            &a,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert!(matches!(recv_message(&b), Err(TransportError::TooManyFds)));
        assert!(matches!(
            send_message(&a, &bytes, &borrowed),
            Err(TransportError::TooManyFds)
        ));
    }

    #[test]
    fn sending_to_a_closed_peer_is_a_disconnect() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send_message(&a, &message(1, 1, &[]), &[]).unwrap_err();
        assert!(err.is_disconnect(), "{err:?}");
    }
}
