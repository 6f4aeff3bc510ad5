//! `frame_reader`: `FrameReader` on a non-blocking socket fed in pieces,
//! read both ways: `read_frame` (piece by piece, the client's way) and
//! `read_whole` (whole messages only, the daemon's way).
//!
//! Input layout: byte 0 is `n`; the next `n % 16` bytes are chunk sizes (a
//! byte `b` means `b + 1` bytes, used in turn and cycled); the rest is the
//! byte stream written into the socket. With no chunk sizes the stream is
//! written in one piece. The reader is driven after every write until it
//! would block (or, for `read_whole`, finds only part of a message), and
//! after the last write the writing end is closed and the reader driven to
//! its final error. For `read_whole`, once [`STALL_WRITES`] writes in a row
//! completed no message, chunks are at least 256 bytes: the kernel charges
//! every write's buffer to the sender's socket, and a message written in
//! hundreds of tiny pieces would fill it before it is whole, so the writer
//! would block for good (PROTOCOL.md §5.1).
//!
//! Property: for both ways, the frames and the final error are exactly
//! those of a plain reference parser of the stream, whatever the chunking;
//! nothing panics; every frame has `payload.len() == header.size`. With
//! `read_whole`, the socket holds every byte not yet returned in a frame
//! at every step (`FIONREAD`): nothing is ever half taken. Each frame also
//! goes through the daemon's `server::decode_request` and `encode_reply`,
//! whose reply must decode.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use gmem_protocol::conn::{ConnError, Frame, FrameReader, WholeRead};
use gmem_protocol::server::{decode_request, encode_reply, Response};
use gmem_protocol::wire::{Header, Reply, WireError, HEADER_SIZE};

/// Writes in a row that complete no message after which `read_whole` gets
/// chunks of at least 256 bytes.
pub const STALL_WRITES: usize = 32;

/// Most chunk sizes an input can give.
pub const MAX_CHUNKS: usize = 15;

/// Builds an input: `chunks` are the chunk lengths (1..=256 each, at most
/// [`MAX_CHUNKS`]), `stream` the bytes to send.
pub fn frame_input(chunks: &[usize], stream: &[u8]) -> Vec<u8> {
    assert!(chunks.len() <= MAX_CHUNKS);
    let mut out = vec![u8::try_from(chunks.len()).expect("at most 15")];
    for &c in chunks {
        assert!((1..=256).contains(&c), "chunk length {c}");
        out.push(u8::try_from(c - 1).expect("checked above"));
    }
    out.extend_from_slice(stream);
    out
}

/// Splits an input into chunk lengths and the stream.
pub fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), &[]);
    };
    let n = usize::from(n) % (MAX_CHUNKS + 1);
    let n = n.min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    (sizes.iter().map(|&b| usize::from(b) + 1).collect(), stream)
}

/// How a stream ends, as the reader reports it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    Truncated(usize),
    BadHeader(WireError),
}

/// The reference: frames (header, payload) and the end, parsed in one go.
fn reference(mut stream: &[u8]) -> (Vec<(Header, Vec<u8>)>, End) {
    let mut frames = Vec::new();
    loop {
        let Some((head, rest)) = stream.split_first_chunk::<HEADER_SIZE>() else {
            let end = if stream.is_empty() {
                End::Closed
            } else {
                End::Truncated(stream.len())
            };
            return (frames, end);
        };
        let header = match Header::from_bytes(head) {
            Ok(h) => h,
            Err(e) => return (frames, End::BadHeader(e)),
        };
        let size = header.size as usize;
        if rest.len() < size {
            return (frames, End::Truncated(HEADER_SIZE + rest.len()));
        }
        frames.push((header, rest[..size].to_vec()));
        stream = &rest[size..];
    }
}

/// How the reader is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `read_frame`: piece by piece.
    Pieces,
    /// `read_whole`: whole messages only.
    Whole,
}

/// Runs every property of the `frame_reader` target on `data`.
pub fn check_frames(data: &[u8]) {
    let (chunks, stream) = split_input(data);
    let expected = reference(stream);
    for way in [Way::Pieces, Way::Whole] {
        let (frames, end) = read_stream(way, &chunks, stream);
        assert_eq!(frames.len(), expected.0.len(), "{way:?}: frame count");
        for ((header, payload), (eh, ep)) in frames.iter().zip(&expected.0) {
            assert_eq!(header, eh, "{way:?}");
            assert_eq!(payload, ep, "{way:?}");
        }
        assert_eq!(end, expected.1, "{way:?}");
    }
}

/// Writes `stream` in `chunks` into a socketpair read `way`; returns the
/// frames read and how the stream ended.
fn read_stream(way: Way, chunks: &[usize], stream: &[u8]) -> (Vec<(Header, Vec<u8>)>, End) {
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    rx.set_nonblocking(true).expect("non-blocking reader");
    let mut reader = Reader {
        way,
        inner: FrameReader::new(),
        frames: Vec::new(),
        taken: 0,
    };
    let mut end = None;

    let mut sent = 0;
    let mut sizes = chunks.iter().copied().cycle();
    let mut idle_writes = 0;
    while sent < stream.len() && end.is_none() {
        let mut n = sizes.next().unwrap_or(stream.len());
        if way == Way::Whole && idle_writes >= STALL_WRITES {
            n = n.max(256);
        }
        let n = n.min(stream.len() - sent);
        // Never blocks: the reader drains after every write, so at most one
        // chunk (<= 256 bytes, or the whole input) plus one unfinished
        // message (<= 4108 bytes, in at most 48 writes) is ever buffered.
        tx.write_all(&stream[sent..sent + n])
            .expect("write to socketpair");
        sent += n;
        let frames_before = reader.frames.len();
        end = reader.drain(&rx, sent, false);
        idle_writes = if reader.frames.len() > frames_before {
            0
        } else {
            idle_writes + 1
        };
    }
    if end.is_none() {
        drop(tx);
        end = reader.drain(&rx, sent, true);
    }
    (reader.frames, end.expect("reader ended after EOF"))
}

/// A reader of one way, with what it returned so far.
struct Reader {
    way: Way,
    inner: FrameReader,
    frames: Vec<(Header, Vec<u8>)>,
    /// Bytes of the frames returned.
    taken: usize,
}

impl Reader {
    /// Reads frames until the reader would block or finds only part of a
    /// message (`None`) or fails (`Some`). After EOF (`eof`) it must fail
    /// rather than wait. `sent` bytes were written so far.
    fn drain(&mut self, rx: &UnixStream, sent: usize, eof: bool) -> Option<End> {
        loop {
            let read = match self.way {
                Way::Pieces => self.inner.read_frame(rx.as_fd()),
                Way::Whole => self.inner.read_whole(rx.as_fd()).map(|r| match r {
                    WholeRead::Frame(frame) => Some(frame),
                    WholeRead::Partial | WholeRead::Empty => None,
                }),
            };
            match read {
                Ok(Some(frame)) => {
                    assert_eq!(frame.payload.len(), frame.header.size as usize);
                    assert!(frame.fds.is_empty(), "fds from nowhere");
                    assert!(self.inner.is_idle(), "reader not idle after a frame");
                    self.taken += HEADER_SIZE + frame.payload.len();
                    self.frames.push((frame.header, frame.payload.clone()));
                    check_server(frame);
                }
                Ok(None) => {
                    assert!(!eof, "reader waits after EOF");
                    if self.way == Way::Whole {
                        let queued = rustix::io::ioctl_fionread(rx).expect("FIONREAD");
                        assert_eq!(
                            usize::try_from(queued).expect("small"),
                            sent - self.taken,
                            "read_whole took part of a message"
                        );
                    }
                    return None;
                }
                Err(ConnError::Closed) => return Some(End::Closed),
                Err(ConnError::Truncated { received }) => return Some(End::Truncated(received)),
                Err(ConnError::BadHeader(e)) => return Some(End::BadHeader(e)),
                Err(e) => panic!("unexpected reader error: {e:?}"),
            }
        }
    }
}

fn check_server(frame: Frame) {
    let code = frame.header.code;
    let response = match decode_request(frame) {
        Ok(_) => Response::ok(Vec::new()),
        Err(refusal) => Response::error(refusal.errno, &refusal.text),
    };
    let out = encode_reply(code, response);
    assert!(out.header.is_reply);
    assert_eq!(out.header.code, code);
    assert_eq!(out.header.size as usize, out.payload.len());
    Reply::decode(&out.payload).expect("server reply decodes");
}
