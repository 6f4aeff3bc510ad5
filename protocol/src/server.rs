//! Server side of the protocol, without I/O: a received [`Frame`] checked
//! and decoded into a request, and a [`Response`] encoded into a reply frame.
//!
//! Syntax problems a framed message can have (unknown code, bad length,
//! wrong fd count, a reply where a request belongs) come back as a
//! [`FrameError`] the daemon answers with; fds of a refused message are
//! dropped, which closes them. What a request means, and who may send it,
//! is the daemon's to decide.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

use crate::conn::Frame;
use crate::wire::{Header, Reply, Request, RequestBody, RestartNotice};

/// What the daemon answers one request with.
#[derive(Debug)]
pub struct Response {
    /// Status, text and body.
    pub reply: Reply,
    /// Fds to send with the reply (only on success).
    pub fds: Vec<OwnedFd>,
}

impl Response {
    /// A success with a body and no fds.
    pub fn ok(body: Vec<u8>) -> Self {
        Response {
            reply: Reply::ok(body),
            fds: Vec::new(),
        }
    }

    /// A success carrying fds.
    pub fn ok_with_fds(body: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Response {
            reply: Reply::ok(body),
            fds,
        }
    }

    /// An error reply.
    pub fn error(errno: Errno, text: &str) -> Self {
        Response {
            reply: Reply::error(errno.raw_os_error(), text),
            fds: Vec::new(),
        }
    }
}

/// A frame that is not a request the daemon can act on, with the errno and
/// text of the reply that answers it (PROTOCOL.md §5.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct FrameError {
    /// The reply's errno.
    pub errno: Errno,
    /// What is wrong with the frame.
    pub text: String,
}

impl FrameError {
    fn new(errno: Errno, text: String) -> Self {
        FrameError { errno, text }
    }
}

/// A decoded request with exactly the fds it must carry.
#[derive(Debug)]
pub struct DecodedRequest {
    /// The request.
    pub body: RequestBody,
    /// Its fds ([`Request::request_fds`] of them).
    pub fds: Vec<OwnedFd>,
}

/// A reply ready to be queued: header, payload and fds.
#[derive(Debug)]
pub struct OutgoingReply {
    /// Reply header.
    pub header: Header,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Fds to attach.
    pub fds: Vec<OwnedFd>,
}

/// Checks a frame's syntax and decodes its request.
///
/// # Errors
/// [`FrameError`]: a reply flag (`EINVAL`), an unknown code
/// (`EOPNOTSUPP`), the wrong number of fds (`EBADF`), a payload that does
/// not decode (`EINVAL`). The frame's fds are closed then.
pub fn decode_request(frame: Frame) -> Result<DecodedRequest, FrameError> {
    if frame.header.is_reply {
        return Err(FrameError::new(
            Errno::INVAL,
            "REPLY flag set on a message sent to the daemon".to_owned(),
        ));
    }
    let request = Request::try_from(frame.header.code)
        .map_err(|e| FrameError::new(Errno::OPNOTSUPP, e.to_string()))?;
    let expected = request.request_fds();
    if frame.fds.len() != expected {
        return Err(FrameError::new(
            Errno::BADF,
            format!(
                "{request} carries exactly {expected} fd(s), got {}",
                frame.fds.len()
            ),
        ));
    }
    let body = RequestBody::decode(frame.header.code, &frame.payload)
        .map_err(|e| FrameError::new(Errno::INVAL, e.to_string()))?;
    Ok(DecodedRequest {
        body,
        fds: frame.fds,
    })
}

/// Encodes the reply to a request of `code`. An error reply never carries
/// fds (PROTOCOL.md): any in `response` are closed.
pub fn encode_reply(code: u32, response: Response) -> OutgoingReply {
    let mut fds = response.fds;
    if response.reply.status != 0 {
        fds.clear();
    }
    let payload = response.reply.encode();
    OutgoingReply {
        header: Header::reply(code, payload.len()),
        payload,
        fds,
    }
}

/// The NOTICE a restarted daemon sends first on every connection it took
/// over (PROTOCOL.md §14.2), before it reads anything from it.
///
/// `restarts` counts the restarts the daemon survived, this one included.
/// `pending` says whether a request is queued unread on the connection,
/// whole or in part ([`crate::conn::peek_queued`] returns
/// [`Queued::Whole`](crate::conn::Queued::Whole) or
/// [`Queued::Partial`](crate::conn::Queued::Partial)): it will be
/// answered after the notice. A client that gets `pending == false` while it waits
/// for a reply reconciles (§14.4).
pub fn encode_restart_notice(restarts: u32, pending: bool) -> OutgoingReply {
    let payload = RestartNotice { restarts, pending }.encode_payload();
    OutgoingReply {
        header: Header::notice(payload.len()),
        payload,
        fds: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Name;

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
    fn a_valid_request_decodes_with_its_fds() {
        let body = RequestBody::Open(crate::wire::FileRef::own(Name::new("f").unwrap()));
        let decoded = decode_request(frame(3, body.encode(), vec![])).unwrap();
        assert_eq!(decoded.body, body);
        assert!(decoded.fds.is_empty());
        let out = encode_reply(3, Response::ok(vec![]));
        assert!(out.header.is_reply);
        assert_eq!(out.header.code, 3);
        assert_eq!(Reply::decode(&out.payload).unwrap().status, 0);
    }

    #[test]
    fn each_syntax_error_has_its_errno() {
        let open = RequestBody::Open(crate::wire::FileRef::own(Name::new("f").unwrap())).encode();
        let mut reply_flagged = frame(3, open.clone(), vec![]);
        reply_flagged.header.is_reply = true;
        let cases = vec![
            (frame(77, vec![], vec![]), Errno::OPNOTSUPP),
            (frame(3, vec![0; 3], vec![]), Errno::INVAL),
            (frame(3, open, vec![memfd()]), Errno::BADF),
            (frame(6, vec![0; 72], vec![]), Errno::BADF),
            (reply_flagged, Errno::INVAL),
        ];
        for (f, errno) in cases {
            let err = decode_request(f).unwrap_err();
            assert_eq!(err.errno, errno, "{err}");
            assert!(!err.text.is_empty());
        }
    }

    #[test]
    fn error_replies_carry_no_fds() {
        let mut response = Response::error(Errno::BUSY, "busy");
        response.fds.push(memfd());
        let out = encode_reply(2, response);
        assert!(out.fds.is_empty());
        let reply = Reply::decode(&out.payload).unwrap();
        assert_eq!(
            (reply.status, reply.text.as_str()),
            (-Errno::BUSY.raw_os_error(), "busy")
        );
        let out = encode_reply(2, Response::ok_with_fds(vec![], vec![memfd()]));
        assert_eq!(out.fds.len(), 1);
    }

    #[test]
    fn restart_notice_frame() {
        let out = encode_restart_notice(4, true);
        assert!(out.header.is_notice());
        assert_eq!(out.header.size as usize, out.payload.len());
        assert!(out.fds.is_empty());
        assert_eq!(
            RestartNotice::decode_payload(&out.payload),
            Ok(RestartNotice {
                restarts: 4,
                pending: true
            })
        );
        // A notice is not a request: sent to the daemon, it is refused.
        let as_request = Frame {
            header: Header {
                is_reply: false,
                ..out.header
            },
            payload: out.payload,
            fds: Vec::new(),
        };
        assert_eq!(
            decode_request(as_request).unwrap_err().errno,
            Errno::OPNOTSUPP
        );
    }
}
