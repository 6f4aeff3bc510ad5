//! `frame_reader`: `FrameReader` on a non-blocking socket fed in pieces.
//!
//! Input layout: byte 0 is `n`; the next `n % 16` bytes are chunk sizes (a
//! byte `b` means `b + 1` bytes, used in turn and cycled); the rest is the
//! byte stream written into the socket. With no chunk sizes the stream is
//! written in one piece. The reader is driven after every write until it
//! would block, and after the last write the writing end is closed and the
//! reader driven to its final error.
//!
//! Property: the frames and the final error are exactly those of a plain
//! reference parser of the stream, whatever the chunking; nothing panics;
//! every frame has `payload.len() == header.size`. Each frame also goes
//! through the daemon's `server::decode_request` and `encode_reply`, whose
//! reply must decode.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use gmem_protocol::conn::{ConnError, Frame, FrameReader};
use gmem_protocol::server::{decode_request, encode_reply, Response};
use gmem_protocol::wire::{Header, Reply, WireError, HEADER_SIZE};

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

/// Runs every property of the `frame_reader` target on `data`.
pub fn check_frames(data: &[u8]) {
    let (chunks, stream) = split_input(data);
    let (expected_frames, expected_end) = reference(stream);

    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    rx.set_nonblocking(true).expect("non-blocking reader");
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    let mut end = None;

    let mut sent = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while sent < stream.len() && end.is_none() {
        let n = sizes
            .next()
            .unwrap_or(stream.len())
            .min(stream.len() - sent);
        // Never blocks: the reader drains after every write, so at most one
        // chunk (<= 256 bytes, or the whole input) is ever buffered.
        tx.write_all(&stream[sent..sent + n])
            .expect("write to socketpair");
        sent += n;
        end = drain(&mut reader, &rx, &mut frames, false);
    }
    if end.is_none() {
        drop(tx);
        end = drain(&mut reader, &rx, &mut frames, true);
    }
    let end = end.expect("reader ended after EOF");

    assert_eq!(frames.len(), expected_frames.len(), "frame count");
    for ((header, payload), (eh, ep)) in frames.iter().zip(&expected_frames) {
        assert_eq!(header, eh);
        assert_eq!(payload, ep);
    }
    assert_eq!(end, expected_end);
}

/// Reads frames until the reader would block (`None`) or fails (`Some`).
/// After EOF (`eof`) it must fail rather than block.
fn drain(
    reader: &mut FrameReader,
    rx: &UnixStream,
    frames: &mut Vec<(Header, Vec<u8>)>,
    eof: bool,
) -> Option<End> {
    loop {
        match reader.read_frame(rx.as_fd()) {
            Ok(Some(frame)) => {
                assert_eq!(frame.payload.len(), frame.header.size as usize);
                assert!(frame.fds.is_empty(), "fds from nowhere");
                assert!(reader.is_idle(), "reader not idle after a frame");
                let kept = (frame.header, frame.payload.clone());
                check_server(frame);
                frames.push(kept);
            }
            Ok(None) => {
                assert!(!eof, "reader would block after EOF");
                return None;
            }
            Err(ConnError::Closed) => return Some(End::Closed),
            Err(ConnError::Truncated { received }) => return Some(End::Truncated(received)),
            Err(ConnError::BadHeader(e)) => return Some(End::BadHeader(e)),
            Err(e) => panic!("unexpected reader error: {e:?}"),
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
