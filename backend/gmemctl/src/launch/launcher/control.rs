//! The launcher's control socket (`RUN_DIR/NAME.ctl`): how `gmemctl
//! upgrade` has the launcher start the new QEMU as its own child, so the
//! launcher keeps supervising the VM (signals, exit status, stdio) across
//! upgrades.
//!
//! One request per connection: the client sends a JSON document, with the
//! fds for the new QEMU as `SCM_RIGHTS` on its first byte, then shuts down
//! its sending side; the launcher answers with one JSON document and closes.
//! Only the launcher's own uid and root may ask (`SO_PEERCRED`); the socket
//! is mode 0600.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::launch::process::ProcessId;

/// Largest request or reply.
const MAX_MESSAGE: usize = 1 << 20;
/// Most fds one request may carry (main RAM, lease, DIMMs).
const MAX_FDS: usize = 64;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed: the launcher is gone.
    #[error("cannot reach the launcher at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    /// A message that is not valid JSON of the expected shape.
    #[error("malformed control message")]
    Malformed(#[source] serde_json::Error),
    /// A message over the size or fd limit, or with truncated fds.
    #[error("control message too large or with too many fds")]
    TooLarge,
    /// A peer that may not ask.
    #[error("control request from uid {uid} refused")]
    NotAllowed {
        /// The peer's uid.
        uid: u32,
    },
}

/// What `gmemctl` asks the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Start QEMU with the request's fds at `targets` (same order).
    Spawn {
        /// The program.
        program: PathBuf,
        /// All its arguments.
        args: Vec<String>,
        /// fd number in QEMU of each fd sent.
        targets: Vec<RawFd>,
    },
    /// The spawned QEMU took over: follow it when the old one exits.
    Commit {
        /// Its pid.
        pid: u32,
    },
    /// The spawned QEMU is not needed: kill it.
    Abort {
        /// Its pid.
        pid: u32,
    },
}

/// The launcher's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ControlReply {
    /// QEMU started.
    Spawned {
        /// Its identity.
        process: ProcessId,
    },
    /// Done.
    Done,
    /// Refused, with the reason.
    Refused {
        /// Why.
        message: String,
    },
}

/// The launcher's listening socket; removed when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Listens at `path` (replacing a stale socket), mode 0600, non-blocking.
    ///
    /// # Errors
    /// [`ControlError::Bind`].
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
        })
    }

    /// The listening fd, to poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts one pending connection and reads its request (bounded by
    /// `timeout`). `Ok(None)`: nobody was waiting.
    ///
    /// # Errors
    /// [`ControlError`] for a connection that fails or misbehaves.
    pub fn accept(&self, timeout: Duration) -> Result<Option<Incoming>, ControlError> {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let cred = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
        let uid = cred.uid.as_raw();
        let own = rustix::process::geteuid().as_raw();
        if uid != own && uid != 0 {
            let mut incoming = Incoming {
                stream,
                request: None,
                fds: Vec::new(),
            };
            incoming.reply(&ControlReply::Refused {
                message: format!("uid {uid} may not control this launcher"),
            });
            return Err(ControlError::NotAllowed { uid });
        }
        let (bytes, fds) = read_message(&stream)?;
        let request = serde_json::from_slice(&bytes).map_err(ControlError::Malformed)?;
        Ok(Some(Incoming {
            stream,
            request: Some(request),
            fds,
        }))
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request being served.
#[derive(Debug)]
pub struct Incoming {
    stream: UnixStream,
    request: Option<ControlRequest>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

impl Incoming {
    /// The request.
    pub fn request(&self) -> &ControlRequest {
        self.request.as_ref().expect("set for accepted requests")
    }

    /// Sends the reply (failures are logged: the asker is gone).
    pub fn reply(&mut self, reply: &ControlReply) {
        let text = serde_json::to_vec(reply).expect("replies serialize");
        if let Err(e) = self.stream.write_all(&text) {
            log::warn!("control reply not delivered: {e}");
        }
    }
}

/// Sends `request` with `fds` to the launcher at `path` and waits (bounded)
/// for its reply.
///
/// # Errors
/// [`ControlError`].
pub fn call(
    path: &Path,
    request: &ControlRequest,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<ControlReply, ControlError> {
    let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let text = serde_json::to_vec(request).expect("requests serialize");
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(ControlError::TooLarge);
    }
    // The fds travel with the first sendmsg; the rest (if any) without.
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&text)],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )
    .map_err(std::io::Error::from)?;
    (&stream).write_all(&text[sent..])?;
    stream.shutdown(Shutdown::Write)?;
    let (reply, extra) = read_message(&stream)?;
    drop(extra);
    serde_json::from_slice(&reply).map_err(ControlError::Malformed)
}

/// Reads everything up to EOF, keeping the fds that arrive.
fn read_message(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), ControlError> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match rustix::net::recvmsg(stream, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        };
        for message in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
            return Err(ControlError::TooLarge);
        }
        if msg.bytes == 0 {
            return Ok((bytes, fds));
        }
        bytes.extend_from_slice(&buf[..msg.bytes]);
        if bytes.len() > MAX_MESSAGE {
            return Err(ControlError::TooLarge);
        }
        // Fall back to plain reads once the fds (first byte) are in.
        if !bytes.is_empty() {
            let mut rest = Vec::new();
            stream
                .take((MAX_MESSAGE + 1 - bytes.len()) as u64)
                .read_to_end(&mut rest)?;
            bytes.extend(rest);
            if bytes.len() > MAX_MESSAGE {
                return Err(ControlError::TooLarge);
            }
            return Ok((bytes, fds));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn request_with_fds_and_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.ctl");
        let server = ControlServer::bind(&path).unwrap();
        assert!(server.accept(Duration::from_secs(1)).unwrap().is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let file = tempfile::tempfile().unwrap();
        let want = rustix::fs::fstat(&file).unwrap().st_ino;
        let p = path.clone();
        let client = thread::spawn(move || {
            let request = ControlRequest::Spawn {
                program: "qemu".into(),
                args: vec!["x".repeat(200_000)],
                targets: vec![201],
            };
            call(&p, &request, &[file.as_fd()], Duration::from_secs(5)).unwrap()
        });
        let mut incoming = loop {
            if let Some(i) = server.accept(Duration::from_secs(5)).unwrap() {
                break i;
            }
            thread::sleep(Duration::from_millis(5));
        };
        match incoming.request() {
            ControlRequest::Spawn { args, targets, .. } => {
                assert_eq!(args[0].len(), 200_000);
                assert_eq!(targets, &[201]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(incoming.fds.len(), 1);
        assert_eq!(rustix::fs::fstat(&incoming.fds[0]).unwrap().st_ino, want);
        let process = ProcessId::current();
        incoming.reply(&ControlReply::Spawned { process });
        drop(incoming);
        assert_eq!(client.join().unwrap(), ControlReply::Spawned { process });

        drop(server);
        assert!(!path.exists());
        let err = call(
            &path,
            &ControlRequest::Commit { pid: 1 },
            &[],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::Connect { .. }), "{err}");
    }

    #[test]
    fn messages_round_trip_as_json() {
        let text = serde_json::to_string(&ControlRequest::Abort { pid: 7 }).unwrap();
        assert_eq!(text, r#"{"op":"abort","pid":7}"#);
        let text = serde_json::to_string(&ControlReply::Refused {
            message: "no".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"result":"refused","message":"no"}"#);
    }
}
