//! `decode_request`: request payload decoding, header decoding and the
//! server's syntax check.
//!
//! Input layout: bytes 0..4 are the request code (little-endian), the rest is
//! the payload. The first 12 bytes are also decoded as a message header.

use gmem_protocol::conn::Frame;
use gmem_protocol::server::{decode_request, encode_reply, Response};
use gmem_protocol::wire::{
    FileRef, Header, RawScopedName, Reply, Request, RequestBody, Scope, HEADER_SIZE, MAX_PAYLOAD,
};

/// Bytes of the HELLO payload that hold the feature bits (masked on decode,
/// so the only part of a request payload that may legitimately change when
/// re-encoded).
const HELLO_FEATURES: std::ops::Range<usize> = 0..8;

/// The fuzz input for one request: code then payload.
pub fn request_input(body: &RequestBody) -> Vec<u8> {
    let mut out = body.request().code().to_le_bytes().to_vec();
    out.extend_from_slice(&body.encode());
    out
}

/// Runs every property of the `decode_request` target on `data`.
pub fn check_request(data: &[u8]) {
    if let Some(bytes) = data.first_chunk::<HEADER_SIZE>() {
        check_header(bytes);
    }
    let Some((code, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let code = u32::from_le_bytes(*code);
    let decoded = RequestBody::decode(code, payload);
    if let Ok(body) = &decoded {
        check_round_trip(code, payload, body);
    }
    check_server(code, payload, decoded.is_ok());
}

fn check_header(bytes: &[u8; HEADER_SIZE]) {
    let Ok(header) = Header::from_bytes(bytes) else {
        return;
    };
    assert!(header.size as usize <= MAX_PAYLOAD, "{header:?} admitted");
    let again = Header::from_bytes(&header.to_bytes());
    assert_eq!(again, Ok(header), "header does not round-trip");
    // The only bit to_bytes may drop is NEED_REPLY (flag bit 3).
    let mut canonical = *bytes;
    canonical[4] &= !(1 << 3);
    assert_eq!(
        header.to_bytes(),
        canonical,
        "header encoding not canonical"
    );
}

/// The length `body` must encode to: its request's plain payload, or the
/// scoped form (feature `VM_SCOPE`) for a file named in another scope.
fn encoded_len(body: &RequestBody) -> usize {
    match body {
        RequestBody::Open(f) | RequestBody::Destroy(f) | RequestBody::Scrub(f)
            if !matches!(f, FileRef { scope: Scope::Own, .. }) =>
        {
            RawScopedName::SIZE
        }
        _ => body.request().request_len(),
    }
}

fn check_round_trip(code: u32, payload: &[u8], body: &RequestBody) {
    let request = body.request();
    assert_eq!(request.code(), code, "{body:?} decoded from code {code}");
    let encoded = body.encode();
    assert_eq!(encoded.len(), encoded_len(body), "{body:?} encoded length");
    let again = RequestBody::decode(code, &encoded);
    assert_eq!(again.as_ref(), Ok(body), "request does not round-trip");

    // Decoding is strict: apart from HELLO's masked feature bits, an accepted
    // payload is exactly the canonical encoding of what it decoded to.
    let (mut ours, mut theirs) = (encoded, payload.to_vec());
    if request == Request::Hello {
        ours[HELLO_FEATURES].fill(0);
        theirs[HELLO_FEATURES].fill(0);
    }
    assert_eq!(ours, theirs, "{request} accepted a non-canonical payload");
}

/// The request as the daemon would see it in a frame without fds: it reaches
/// the handler exactly when it decodes and needs no fd, and every answer is a
/// well-formed reply.
fn check_server(code: u32, payload: &[u8], decodes: bool) {
    if payload.len() > MAX_PAYLOAD {
        return; // FrameReader never produces such a frame.
    }
    let frame = Frame {
        header: Header {
            code,
            is_reply: false,
            size: u32::try_from(payload.len()).expect("bounded by MAX_PAYLOAD"),
        },
        payload: payload.to_vec(),
        fds: Vec::new(),
    };
    let needs_fd = Request::try_from(code).is_ok_and(|r| r.request_fds() > 0);
    let response = match decode_request(frame) {
        Ok(decoded) => {
            assert_eq!(decoded.fds.len(), decoded.body.request().request_fds());
            assert!(
                decodes && !needs_fd,
                "{:?} decoded from an invalid frame",
                decoded.body
            );
            Response::ok(Vec::new())
        }
        Err(refusal) => {
            assert!(
                !decodes || needs_fd,
                "a valid request was refused: {refusal}"
            );
            assert!(refusal.errno.raw_os_error() > 0 && !refusal.text.is_empty());
            Response::error(refusal.errno, &refusal.text)
        }
    };
    let accepted = response.reply.status == 0;
    let out = encode_reply(code, response);
    assert!(out.header.is_reply);
    assert_eq!(out.header.code, code);
    assert_eq!(out.header.size as usize, out.payload.len());
    assert!(out.fds.is_empty());
    let reply = Reply::decode(&out.payload).expect("server reply decodes");
    assert_eq!(reply.status == 0, accepted);
}
