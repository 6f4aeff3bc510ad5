//! `read_whole` and `peek_queued` over socketpairs.

use std::io::Write;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use super::*;
use crate::conn::send_message;
use crate::wire::{Request, WireError};

fn memfd() -> OwnedFd {
    rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

/// Bytes queued in `socket`: what a successor would find there.
fn queued(socket: &UnixStream) -> u64 {
    rustix::io::ioctl_fionread(socket).unwrap()
}

/// One `sendmsg` of `bytes` with `fds`.
fn send_with_fds(socket: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(9))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    let sent = sendmsg(
        socket,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

fn message(request: Request, payload: &[u8]) -> Vec<u8> {
    let mut out = Header::request(request, payload.len()).to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn frame(read: WholeRead) -> Frame {
    match read {
        WholeRead::Frame(frame) => frame,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn a_message_is_taken_only_once_all_of_it_is_queued() {
    // A blocking socket: read_whole must not wait for anything.
    let (mut a, b) = UnixStream::pair().unwrap();
    let bytes = message(Request::Unbind, &[9; 8]);
    let mut reader = FrameReader::new();
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Empty
    ));
    for (sent, upto) in [(0, 5), (5, 12), (12, 15)] {
        a.write_all(&bytes[sent..upto]).unwrap();
        assert!(matches!(
            reader.read_whole(b.as_fd()).unwrap(),
            WholeRead::Partial
        ));
        assert_eq!(
            peek_queued(b.as_fd()).unwrap(),
            Queued::Partial { bytes: upto }
        );
        // Nothing was taken: a successor would find every byte.
        assert_eq!(queued(&b), upto as u64);
        assert!(reader.is_idle());
    }
    a.write_all(&bytes[15..]).unwrap();
    let frame = frame(reader.read_whole(b.as_fd()).unwrap());
    assert_eq!(frame.header, Header::request(Request::Unbind, 8));
    assert_eq!(frame.payload, vec![9; 8]);
    assert!(frame.fds.is_empty());
    assert_eq!(queued(&b), 0);
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Empty
    ));
}

#[test]
fn peeking_takes_nothing() {
    let (a, b) = UnixStream::pair().unwrap();
    send_message(a.as_fd(), Header::request(Request::Status, 8), &[0; 8], &[]).unwrap();
    for _ in 0..2 {
        assert_eq!(
            peek_queued(b.as_fd()).unwrap(),
            Queued::Whole(Header::request(Request::Status, 8))
        );
    }
    assert_eq!(queued(&b), 20);
}

#[test]
fn queued_messages_come_one_by_one_with_their_own_fds() {
    let (a, b) = UnixStream::pair().unwrap();
    let (one, two, three) = (memfd(), memfd(), memfd());
    send_message(a.as_fd(), Header::request(Request::Status, 8), &[1; 8], &[]).unwrap();
    send_message(
        a.as_fd(),
        Header::request(Request::Deposit, 4),
        &[2; 4],
        &[one.as_fd()],
    )
    .unwrap();
    send_message(
        a.as_fd(),
        Header::request(Request::Handoff, 0),
        &[],
        &[two.as_fd(), three.as_fd()],
    )
    .unwrap();
    send_message(a.as_fd(), Header::request(Request::Unbind, 2), &[4; 2], &[]).unwrap();
    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    loop {
        match reader.read_whole(b.as_fd()).unwrap() {
            WholeRead::Frame(f) => got.push((f.header.code, f.payload, f.fds)),
            WholeRead::Empty => break,
            WholeRead::Partial => panic!("every message was whole"),
        }
    }
    let shape: Vec<(u32, Vec<u8>, usize)> = got
        .iter()
        .map(|(code, payload, fds)| (*code, payload.clone(), fds.len()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Request::Status.code(), vec![1; 8], 0),
            (Request::Deposit.code(), vec![2; 4], 1),
            (Request::Handoff.code(), vec![], 2),
            (Request::Unbind.code(), vec![4; 2], 0),
        ]
    );
    for (_, _, fds) in &got {
        for fd in fds {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }
}

#[test]
fn a_message_sent_in_pieces_keeps_its_fds() {
    // fds with the header, the payload in a later sendmsg: the kernel ends
    // a recvmsg after the bytes that carried fds, so this takes two.
    let (mut a, b) = UnixStream::pair().unwrap();
    let bytes = message(Request::Deposit, &[7; 72]);
    send_with_fds(&a, &bytes[..HEADER_SIZE + 10], &[memfd()]);
    let mut reader = FrameReader::new();
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Partial
    ));
    assert_eq!(queued(&b), (HEADER_SIZE + 10) as u64);
    a.write_all(&bytes[HEADER_SIZE + 10..]).unwrap();
    // The next message, with an fd of its own, is already queued too.
    send_message(
        a.as_fd(),
        Header::request(Request::Deposit, 0),
        &[],
        &[memfd().as_fd()],
    )
    .unwrap();
    let first = frame(reader.read_whole(b.as_fd()).unwrap());
    assert_eq!(first.payload, vec![7; 72]);
    assert_eq!(first.fds.len(), 1);
    let second = frame(reader.read_whole(b.as_fd()).unwrap());
    assert_eq!((second.payload.len(), second.fds.len()), (0, 1));
}

#[test]
fn fds_with_part_of_a_header_are_refused() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let bytes = message(Request::Deposit, &[0; 72]);
    send_with_fds(&a, &bytes[..5], &[memfd()]);
    // Alone, it is just a message that has not arrived yet.
    assert_eq!(
        peek_queued(b.as_fd()).unwrap(),
        Queued::Partial { bytes: 5 }
    );
    a.write_all(&bytes[5..]).unwrap();
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(
        matches!(err, ConnError::SplitHeader { received: 5 }),
        "{err:?}"
    );
}

#[test]
fn hangups_between_and_inside_messages() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(matches!(err, ConnError::Closed) && err.is_hangup());

    for cut in [5, HEADER_SIZE, HEADER_SIZE + 3] {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&message(Request::Unbind, &[0; 8])[..cut])
            .unwrap();
        drop(a);
        let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
        assert!(
            matches!(err, ConnError::Truncated { received } if received == cut),
            "{cut}: {err:?}"
        );
    }

    // A whole message before the hang-up is still served, then Closed.
    let (a, b) = UnixStream::pair().unwrap();
    send_message(a.as_fd(), Header::request(Request::Status, 8), &[0; 8], &[]).unwrap();
    drop(a);
    let mut reader = FrameReader::new();
    frame(reader.read_whole(b.as_fd()).unwrap());
    assert!(matches!(
        reader.read_whole(b.as_fd()),
        Err(ConnError::Closed)
    ));
}

#[test]
fn a_half_closed_peer_truncates_a_partial_message() {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(&message(Request::Unbind, &[0; 8])[..7])
        .unwrap();
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(
        matches!(err, ConnError::Truncated { received: 7 }),
        "{err:?}"
    );
}

#[test]
fn bad_headers_are_refused_before_the_payload_arrives() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut bytes = Header::request(Request::Status, 8).to_bytes();
    bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    a.write_all(&bytes).unwrap();
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(matches!(
        err,
        ConnError::BadHeader(WireError::Oversized { .. })
    ));

    let (mut a, b) = UnixStream::pair().unwrap();
    let mut bytes = Header::request(Request::Status, 8).to_bytes();
    bytes[4] = 2;
    a.write_all(&bytes).unwrap();
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(matches!(
        err,
        ConnError::BadHeader(WireError::BadVersion(2))
    ));
}

#[test]
fn too_many_fds_close_the_message() {
    let (a, b) = UnixStream::pair().unwrap();
    let files: Vec<OwnedFd> = (0..9).map(|_| memfd()).collect();
    send_with_fds(&a, &Header::request(Request::Status, 0).to_bytes(), &files);
    let err = FrameReader::new().read_whole(b.as_fd()).unwrap_err();
    assert!(matches!(err, ConnError::TooManyFds));
}

#[test]
fn a_message_read_frame_started_is_finished_first() {
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let bytes = message(Request::Unbind, &[3; 8]);
    let mut reader = FrameReader::new();
    a.write_all(&bytes[..6]).unwrap();
    assert!(reader.read_frame(b.as_fd()).unwrap().is_none());
    assert!(!reader.is_idle());
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Partial
    ));
    a.write_all(&bytes[6..]).unwrap();
    assert_eq!(frame(reader.read_whole(b.as_fd()).unwrap()).payload, [3; 8]);
    assert!(reader.is_idle());
}

#[test]
fn the_reader_says_whether_more_follows_the_message_it_took() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut reader = FrameReader::new();
    for _ in 0..2 {
        send_message(a.as_fd(), Header::request(Request::Status, 8), &[0; 8], &[]).unwrap();
    }
    // A third message, only begun.
    (&a).write_all(&message(Request::Status, &[0; 8])[..5])
        .unwrap();
    let mut more = Vec::new();
    for _ in 0..2 {
        assert!(matches!(
            reader.read_whole(b.as_fd()).unwrap(),
            WholeRead::Frame(_)
        ));
        more.push(reader.more_queued());
    }
    assert_eq!(more, [true, true], "bytes follow both whole messages");
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Partial
    ));
    (&a).write_all(&message(Request::Status, &[0; 8])[5..])
        .unwrap();
    assert!(matches!(
        reader.read_whole(b.as_fd()).unwrap(),
        WholeRead::Frame(_)
    ));
    assert!(!reader.more_queued(), "nothing follows the last");
    // The largest message is found whole by the single look too.
    let big = vec![7u8; crate::wire::MAX_PAYLOAD];
    send_message(
        a.as_fd(),
        Header::request(Request::Status, big.len()),
        &big,
        &[],
    )
    .unwrap();
    let WholeRead::Frame(frame) = reader.read_whole(b.as_fd()).unwrap() else {
        panic!("the largest message is whole");
    };
    assert_eq!(frame.payload, big);
    assert!(!reader.more_queued());
}
