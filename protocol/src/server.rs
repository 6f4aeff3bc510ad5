//! Server side of the protocol, without I/O: turns a received [`Frame`] into
//! a call on a [`Handler`] and the handler's answer into a reply frame.
//!
//! Syntax problems a framed message can have (unknown code, bad length,
//! wrong fd count, a reply where a request belongs) are answered here with an
//! error reply and never reach the handler. Fds of a refused message are
//! dropped, which closes them.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

use crate::conn::Frame;
use crate::wire::{Header, Reply, Request, RequestBody};

/// What a handler returns for one request.
#[derive(Debug)]
pub struct Response {
    /// Status, text and body.
    pub reply: Reply,
    /// Fds to send with the reply (only on success).
    pub fds: Vec<OwnedFd>,
    /// Close the connection once the reply is sent.
    pub close: bool,
}

impl Response {
    /// A success with a body and no fds.
    pub fn ok(body: Vec<u8>) -> Self {
        Response {
            reply: Reply::ok(body),
            fds: Vec::new(),
            close: false,
        }
    }

    /// A success carrying fds.
    pub fn ok_with_fds(body: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Response {
            reply: Reply::ok(body),
            fds,
            close: false,
        }
    }

    /// An error reply.
    pub fn error(errno: Errno, text: &str) -> Self {
        Response {
            reply: Reply::error(errno.raw_os_error(), text),
            fds: Vec::new(),
            close: false,
        }
    }
}

/// Applies decoded requests. Implemented by the daemon, one value per connection.
pub trait Handler {
    /// Called first for every message, well-formed or not: `Some(response)`
    /// refuses it outright (a peer that may not talk to the daemon at all).
    fn admit(&mut self) -> Option<Response> {
        None
    }

    /// Handles one syntactically valid request with exactly the fds it must carry.
    fn handle(&mut self, request: RequestBody, fds: Vec<OwnedFd>) -> Response;

    /// Told about a request refused before it reached [`Handler::handle`],
    /// so the daemon can log it.
    fn refused(&mut self, code: u32, reply: &Reply);
}

/// A reply ready to be queued: header, payload, fds, and whether to close after.
#[derive(Debug)]
pub struct OutgoingReply {
    /// Reply header.
    pub header: Header,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Fds to attach.
    pub fds: Vec<OwnedFd>,
    /// Close the connection after sending.
    pub close: bool,
}

/// Checks a frame, calls the handler, and encodes the reply.
pub fn handle_frame<H: Handler>(handler: &mut H, frame: Frame) -> OutgoingReply {
    let code = frame.header.code;
    let admission = handler.admit();
    let response = if let Some(refusal) = admission {
        refusal
    } else {
        match check_frame(&frame) {
            Ok(request) => handler.handle(request, frame.fds),
            Err(response) => {
                drop(frame.fds);
                handler.refused(code, &response.reply);
                response
            }
        }
    };
    let mut fds = response.fds;
    if response.reply.status != 0 {
        // An error reply never carries fds (PROTOCOL.md).
        fds.clear();
    }
    let payload = response.reply.encode();
    OutgoingReply {
        header: Header::reply(code, payload.len()),
        payload,
        fds,
        close: response.close,
    }
}

fn check_frame(frame: &Frame) -> Result<RequestBody, Response> {
    if frame.header.is_reply {
        return Err(Response::error(
            Errno::INVAL,
            "REPLY flag set on a message sent to the daemon",
        ));
    }
    let request = Request::try_from(frame.header.code)
        .map_err(|e| Response::error(Errno::OPNOTSUPP, &e.to_string()))?;
    let expected = request.request_fds();
    if frame.fds.len() != expected {
        return Err(Response::error(
            Errno::BADF,
            &format!(
                "{request} carries exactly {expected} fd(s), got {}",
                frame.fds.len()
            ),
        ));
    }
    RequestBody::decode(frame.header.code, &frame.payload)
        .map_err(|e| Response::error(Errno::INVAL, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Name;

    #[derive(Default)]
    struct Recorder {
        handled: Vec<RequestBody>,
        refused: Vec<(u32, i32)>,
    }

    impl Handler for Recorder {
        fn handle(&mut self, request: RequestBody, _fds: Vec<OwnedFd>) -> Response {
            self.handled.push(request);
            Response::ok(vec![])
        }
        fn refused(&mut self, code: u32, reply: &Reply) {
            self.refused.push((code, reply.status));
        }
    }

    fn frame(code: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Frame {
        Frame {
            header: Header {
                code,
                is_reply: false,
                size: u32::try_from(payload.len()).unwrap(),
            },
            payload,
            fds,
        }
    }

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn valid_request_reaches_handler() {
        let mut h = Recorder::default();
        let body = RequestBody::Open(Name::new("f").unwrap());
        let out = handle_frame(&mut h, frame(3, body.encode(), vec![]));
        assert_eq!(h.handled, vec![body]);
        assert!(out.header.is_reply);
        assert_eq!(Reply::decode(&out.payload).unwrap().status, 0);
    }

    #[test]
    fn syntax_errors_are_answered_without_the_handler() {
        let mut h = Recorder::default();
        let open = RequestBody::Open(Name::new("f").unwrap()).encode();
        let cases = vec![
            (frame(77, vec![], vec![]), Errno::OPNOTSUPP),
            (frame(3, vec![0; 3], vec![]), Errno::INVAL),
            (frame(3, open.clone(), vec![memfd()]), Errno::BADF),
            (frame(6, vec![0; 72], vec![]), Errno::BADF),
        ];
        for (f, errno) in cases {
            let out = handle_frame(&mut h, f);
            let reply = Reply::decode(&out.payload).unwrap();
            assert_eq!(reply.status, -errno.raw_os_error());
            assert!(!reply.text.is_empty());
            assert!(out.fds.is_empty());
        }
        let mut reply_flagged = frame(3, open, vec![]);
        reply_flagged.header.is_reply = true;
        let out = handle_frame(&mut h, reply_flagged);
        assert_eq!(
            Reply::decode(&out.payload).unwrap().status,
            -Errno::INVAL.raw_os_error()
        );
        assert!(h.handled.is_empty());
        assert_eq!(h.refused.len(), 5);
    }
}
