//! The `sd_notify` datagram protocol, both ends: the address in
//! `$NOTIFY_SOCKET`, fd names, sending a message with fds (the serving
//! gmemd) and receiving one with its sender's credentials (the keeper).
//!
//! A message is one datagram of `KEY=VALUE` lines; fds travel beside it as
//! `SCM_RIGHTS`. The receiver sets `SO_PASSCRED`, so the kernel attaches the
//! sender's real pid to every datagram: that is how systemd (and the keeper)
//! accept notifications from the main process only.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg_addr, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
};

use super::FdStoreError;

/// The largest message systemd reads (`NOTIFY_BUFFER_MAX`, one page); the
/// keeper reads no more either.
pub const MAX_MESSAGE: usize = 4096;

/// The most fds one datagram may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// The longest fd name systemd accepts (`FDNAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Parses a `$NOTIFY_SOCKET` value: an absolute socket path, or `@name` for
/// a name in the abstract namespace.
///
/// # Errors
/// [`FdStoreError::BadAddress`] for anything else (systemd 254's `vsock:`
/// addresses included: systemd 252 never hands them out).
pub fn parse_address(text: &str) -> Result<SocketAddrUnix, FdStoreError> {
    let bad = || FdStoreError::BadAddress(text.to_owned());
    let addr = if let Some(name) = text.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad());
        }
        SocketAddrUnix::new_abstract_name(name.as_bytes())
    } else if text.starts_with('/') {
        SocketAddrUnix::new(text)
    } else {
        return Err(bad());
    };
    addr.map_err(|_| bad())
}

/// Whether `name` may be an `FDNAME=`: 1 to [`MAX_NAME`] printable ASCII
/// characters other than `:` (the separator of `LISTEN_FDNAMES`) and space.
/// systemd's own rule is a little looser; this one is safe everywhere.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Makes `text` fit on one `KEY=VALUE` line: newlines become spaces.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Sends `text` with `fds` attached to `address` from `socket` (an unbound
/// datagram socket), as one datagram.
///
/// # Errors
/// The failing `sendmsg`, or `WriteZero` if the kernel took part of it
/// (datagrams are all or nothing, so this does not happen).
pub fn send(
    socket: BorrowedFd<'_>,
    address: &SocketAddrUnix,
    text: &str,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut big_space = Vec::new();
    let space: &mut [MaybeUninit<u8>] = if fds.len() <= 1 {
        &mut space
    } else {
        big_space.resize(
            rustix::cmsg_space!(ScmRights(fds.len())),
            MaybeUninit::uninit(),
        );
        &mut big_space
    };
    let mut control = SendAncillaryBuffer::new(space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let sent = sendmsg_addr(
        socket,
        address,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent == text.len() {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::WriteZero))
    }
}

/// One received notification.
#[derive(Debug, Default)]
pub struct Message {
    /// The sender's pid, from the kernel (`SCM_CREDENTIALS`); `None` if the
    /// socket did not ask for credentials.
    pub pid: Option<u32>,
    /// The text, lossily decoded.
    pub text: String,
    /// The fds that came with it, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// Some fds or text did not fit the buffers and were lost.
    pub truncated: bool,
}

impl Message {
    /// The value of the last `KEY=` line, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text.lines().rev().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    /// Whether a `KEY=value` line is present.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// Receives one message from a non-blocking datagram socket; `None` when
/// none is queued.
///
/// # Errors
/// The failing `recvmsg` other than `EAGAIN`/`EINTR`.
pub fn recv(socket: BorrowedFd<'_>) -> io::Result<Option<Message>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = vec![
        MaybeUninit::<u8>::uninit();
        rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE), ScmCredentials(1))
    ];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(got) => break got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let mut message = Message {
        truncated: got
            .flags
            .intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC),
        ..Message::default()
    };
    for item in control.drain() {
        match item {
            RecvAncillaryMessage::ScmRights(fds) => message.fds.extend(fds),
            RecvAncillaryMessage::ScmCredentials(cred) => {
                message.pid = u32::try_from(cred.pid.as_raw_nonzero().get()).ok();
            }
            _ => {}
        }
    }
    message.text = String::from_utf8_lossy(&buf[..got.bytes.min(buf.len())]).into_owned();
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use rustix::net::{bind, socket_with, sockopt, AddressFamily, SocketFlags, SocketType};

    use super::*;

    fn dgram() -> OwnedFd {
        socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap()
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(parse_address("/run/systemd/notify").is_ok());
        let abs = parse_address("@gmemd/test").unwrap();
        assert_eq!(abs.abstract_name(), Some(&b"gmemd/test"[..]));
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(
                matches!(parse_address(bad), Err(FdStoreError::BadAddress(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_are_short_printable_and_colon_free() {
        for ok in ["listen", "f12", "c7", "gmemd.socket", &"x".repeat(MAX_NAME)] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in ["", "a:b", "a b", "tab\t", "é", &"x".repeat(MAX_NAME + 1)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }

    #[test]
    fn a_message_with_an_fd_arrives_with_the_sender_pid() {
        let receiver = dgram();
        sockopt::set_socket_passcred(&receiver, true).unwrap();
        let name = format!("gmemd-notify-test-{}", std::process::id());
        let address = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        bind(&receiver, &address).unwrap();
        assert!(recv(receiver.as_fd()).unwrap().is_none(), "nothing queued");

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"content").unwrap();
        let sender = dgram();
        send(
            sender.as_fd(),
            &address,
            "FDSTORE=1\nFDNAME=f1\n",
            &[file.as_fd()],
        )
        .unwrap();
        let message = recv(receiver.as_fd()).unwrap().expect("a message");
        assert_eq!(message.pid, Some(std::process::id()));
        assert!(message.has("FDSTORE", "1"));
        assert_eq!(message.get("FDNAME"), Some("f1"));
        assert_eq!(message.get("FDPOLL"), None);
        assert!(!message.truncated);
        assert_eq!(message.fds.len(), 1);
        let mut got = std::fs::File::from(message.fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "content");
    }

    #[test]
    fn many_fds_in_one_message() {
        let receiver = dgram();
        let dir = tempfile::tempdir().unwrap();
        let address = SocketAddrUnix::new(dir.path().join("notify")).unwrap();
        bind(&receiver, &address).unwrap();
        let files: Vec<_> = (0..5).map(|_| tempfile::tempfile().unwrap()).collect();
        let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
        send(dgram().as_fd(), &address, "FDSTORE=1\n", &fds).unwrap();
        let message = recv(receiver.as_fd()).unwrap().unwrap();
        assert_eq!(message.pid, None, "no SO_PASSCRED, no pid");
        assert_eq!(message.fds.len(), 5);
    }
}
