//! The two peers of the filter: QEMU's end (writes the records, reads the
//! replies) and the backend's end (reads whole messages with their fds).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{fstat, FileType};
use rustix::io::Errno;
use rustix::net::{
    recv, recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use super::input::{Record, HEADER_SIZE};
use super::model::{
    fd_rule, ADD_MEM_REG, MAX_PAYLOAD, REPLY, SET_LOG_BASE, SET_MEM_TABLE, VERSION_1,
};
use super::STALL;

/// Room for more fds than any message may carry, so a filter that
/// forwards too many is seen doing it.
const FD_ROOM: usize = 16;

/// Writes every record into `qemu` (fds from `fd_of`), reading whatever
/// the filter answers in between, then shuts the writing side down and
/// reads until the filter closes. Returns the bytes read.
pub fn play_frontend<'f>(
    qemu: &UnixStream,
    records: &[Record<'_>],
    fd_of: impl Fn(u8) -> BorrowedFd<'f>,
) -> Vec<u8> {
    qemu.set_nonblocking(true).expect("non-blocking frontend");
    // The pieces to send: bytes and whether the record's fds go with them.
    let mut pieces: Vec<(&[u8], Vec<BorrowedFd<'f>>)> = Vec::new();
    for record in records {
        let fds: Vec<_> = record.fds.iter().map(|&s| fd_of(s)).collect();
        if record.fds_ride_payload() {
            let (header, payload) = record.bytes.split_at(HEADER_SIZE);
            pieces.push((header, Vec::new()));
            pieces.push((payload, fds));
        } else {
            pieces.push((record.bytes, fds));
        }
    }
    let mut replies = Vec::new();
    let mut piece = 0;
    let mut sent = 0;
    let mut writing = true;
    let mut reading = true;
    while reading {
        if writing && piece == pieces.len() {
            // Only the filter is left to end.
            let _ = qemu.shutdown(std::net::Shutdown::Write);
            writing = false;
        }
        let mut events = PollFlags::IN;
        if writing {
            events |= PollFlags::OUT;
        }
        let mut fds = [PollFd::new(qemu, events)];
        let timeout = Timespec::try_from(super::STALL).expect("timespec");
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => panic!(
                "the filter stalled: no progress for {STALL:?} (piece {piece} of {}, writing {writing})",
                pieces.len()
            ),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
        let ready = fds[0].revents();
        if writing && ready.intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP) {
            let (bytes, attach) = &pieces[piece];
            match send_piece(qemu, &bytes[sent..], if sent == 0 { attach } else { &[] }) {
                Ok(n) => {
                    sent += n;
                    if sent == bytes.len() {
                        piece += 1;
                        sent = 0;
                    }
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                // The filter ended (a protocol break): nothing more to send.
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    writing = false;
                }
                Err(e) => panic!("sending to the filter: {e}"),
            }
        }
        if ready.intersects(PollFlags::IN | PollFlags::ERR | PollFlags::HUP) {
            let mut buf = [0u8; 4096];
            match recv(qemu, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => reading = false,
                Ok((got, _)) => replies.extend_from_slice(&buf[..got]),
                Err(Errno::AGAIN | Errno::INTR) => {}
                // The filter closed with our bytes unread.
                Err(Errno::CONNRESET) => reading = false,
                Err(e) => panic!("reading from the filter: {e}"),
            }
        }
    }
    replies
}

/// One non-blocking send: bytes sent, or the errno.
fn send_piece(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize, Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(10))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(
            control.push(SendAncillaryMessage::ScmRights(fds)),
            "fd room"
        );
    }
    sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
}

/// A message the backend received.
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// (dev, ino) of each fd.
    pub ids: Vec<(u64, u64)>,
}

/// Reads whole messages from `backend` until the filter closes it; panics
/// on anything that is not a sequence of whole messages.
pub fn drain_backend(backend: &UnixStream) -> Vec<Received> {
    backend
        .set_read_timeout(Some(STALL))
        .expect("backend read timeout");
    let mut out = Vec::new();
    loop {
        let mut bytes = vec![0; HEADER_SIZE];
        let mut fds = Vec::new();
        let got = recv_exact(backend, &mut bytes, &mut fds);
        if got == 0 {
            assert!(fds.is_empty(), "fds without bytes");
            return out;
        }
        assert_eq!(got, HEADER_SIZE, "the backend got a cut-off header");
        let size = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        assert!(size <= MAX_PAYLOAD, "forwarded payload of {size} bytes");
        bytes.resize(HEADER_SIZE + size, 0);
        let got = recv_exact(backend, &mut bytes[HEADER_SIZE..], &mut fds);
        assert_eq!(got, size, "the backend got a cut-off payload");
        let ids = fds
            .iter()
            .map(|fd| {
                let stat = fstat(fd).expect("fstat forwarded fd");
                (stat.st_dev, stat.st_ino)
            })
            .collect();
        out.push(Received { bytes, fds, ids });
    }
}

/// Fills `buf` unless the peer closes first; returns the bytes read.
fn recv_exact(socket: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[filled..])];
        let received = match recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => panic!("the backend side stalled for {STALL:?}"),
            Err(e) => panic!("reading the backend side: {e}"),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = message {
                fds.extend(got);
            }
        }
        assert!(
            !received.flags.contains(ReturnFlags::CTRUNC),
            "more than {FD_ROOM} fds forwarded"
        );
        if received.bytes == 0 {
            break;
        }
        filled += received.bytes;
    }
    filled
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The properties every forwarded message has, whatever the model says.
pub fn check_forwarded(message: &Received, own: &[(u64, u64)]) {
    let bytes = &message.bytes;
    let request = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let flags = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    assert_eq!(
        flags & 3,
        VERSION_1,
        "forwarded request {request} not version 1"
    );
    assert_eq!(
        flags & REPLY,
        0,
        "forwarded request {request} flagged as a reply"
    );
    let payload = &bytes[HEADER_SIZE..];
    let (least, most) = fd_rule(request, payload);
    let nfds = message.fds.len();
    assert!(
        (least..=most).contains(&nfds),
        "forwarded request {request} with {nfds} fds, takes {least} to {most}"
    );
    // (payload offset of a region, its fd) for each region mapped.
    let regions: Vec<(usize, usize)> = match request {
        SET_MEM_TABLE => (0..nfds).map(|i| (8 + 32 * i, i)).collect(),
        ADD_MEM_REG => vec![(8, 0)],
        _ => Vec::new(),
    };
    for (at, fd) in regions {
        assert!(
            payload.len() >= at + 32,
            "forwarded request {request} too short"
        );
        let (size, offset) = (u64_at(payload, at + 8), u64_at(payload, at + 24));
        let stat = fstat(&message.fds[fd]).expect("fstat");
        assert_eq!(
            FileType::from_raw_mode(stat.st_mode),
            FileType::RegularFile,
            "forwarded a region of a non-regular file"
        );
        let end = offset.checked_add(size);
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        assert!(
            size != 0 && end.is_some_and(|e| e <= file_size),
            "forwarded region offset {offset:#x} size {size:#x} of a file of {file_size:#x} bytes"
        );
        assert!(
            own.contains(&(stat.st_dev, stat.st_ino)),
            "forwarded a region of a file the judge refuses"
        );
    }
    if request == SET_LOG_BASE {
        let (size, offset) = (u64_at(payload, 0), u64_at(payload, 8));
        let stat = fstat(&message.fds[0]).expect("fstat");
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        assert!(
            offset.checked_add(size).is_some_and(|e| e <= file_size),
            "forwarded a log area past the end of its file"
        );
    }
}
