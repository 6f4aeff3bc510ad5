//! What the kernel says about the process on the other end of a connection:
//! its credentials at connect time (`SO_PEERCRED`), and whether a given
//! process holds the client end of the socket now (a lease socket handed to
//! QEMU by a launcher).
//!
//! The client end's inode comes from `sock_diag` (`UNIX_DIAG_PEER`, as
//! `ss -x` shows it); what a process holds from `/proc/PID/fd/N`, one
//! named fd, never a scan of a table the client could make huge. No client
//! statement is believed: a process claimed to hold a lease is checked here.
//! Hand-written on rustix: the netlink crates would bring a dozen
//! dependencies for one 40-byte request.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::ledger::Peer;

mod principal;
pub use principal::{parse_cgroup, principal_of};

/// `SO_PEERCRED` of a connection. Read through libc: the kernel reports
/// pid 0 for a peer in a pid namespace gmemd cannot see, which rustix's
/// `UCred` (whose pid is non-zero by type) cannot represent.
///
/// # Errors
/// The `getsockopt` failure.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).map_err(io::Error::other)?;
    // SAFETY: `cred` and `len` are live locals, valid for writes of the size
    // passed in `len`; the fd is an open socket owned by `stream`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
    })
}

/// The inode of a socket (what `/proc/PID/fd/N` shows as `socket:[INODE]`).
///
/// # Errors
/// The `fstat` failure.
pub fn socket_inode(socket: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(socket)?.st_ino)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const UNIX_DIAG_MSG_LEN: usize = 16;

/// The inode of the other end of a connected Unix socket whose own inode
/// is `inode`, asked of the kernel with `sock_diag`.
///
/// # Errors
/// The netlink failure; `ENOENT` when the kernel knows no such socket or it
/// has no peer (closed), `EOPNOTSUPP` without `CONFIG_UNIX_DIAG`.
pub fn peer_inode(inode: u64) -> io::Result<u64> {
    let inode = u32::try_from(inode).map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))?;
    let nl = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    let mut request = Vec::with_capacity(40);
    // struct nlmsghdr
    request.extend_from_slice(&40u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // seq
    request.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                                    // struct unix_diag_req
    request.push(u8::try_from(libc::AF_UNIX).map_err(io::Error::other)?);
    request.push(0); // protocol
    request.extend_from_slice(&[0, 0]); // pad
    request.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    request.extend_from_slice(&inode.to_ne_bytes());
    request.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    request.extend_from_slice(&[0xff; 8]); // no cookie
    rustix::net::sendto(
        &nl,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut reply = [0u8; 512];
    let (len, _) = rustix::net::recv(&nl, &mut reply, RecvFlags::empty())?;
    parse_peer_reply(&reply[..len.min(reply.len())])
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn bad_reply() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply")
}

/// Finds `UNIX_DIAG_PEER` in a `unix_diag_msg` reply.
fn parse_peer_reply(reply: &[u8]) -> io::Result<u64> {
    let kind = u16_at(reply, 4).ok_or_else(bad_reply)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(reply, NLMSG_HDRLEN).ok_or_else(bad_reply)?;
        // struct nlmsgerr: a negative errno.
        let errno = i32::from_ne_bytes(errno.to_ne_bytes()).saturating_neg();
        return Err(io::Error::from_raw_os_error(errno));
    }
    let total = usize::try_from(u32_at(reply, 0).ok_or_else(bad_reply)?)
        .map_err(|_| bad_reply())?
        .min(reply.len());
    let mut at = NLMSG_HDRLEN + UNIX_DIAG_MSG_LEN;
    while at + 4 <= total {
        let len = usize::from(u16_at(reply, at).ok_or_else(bad_reply)?);
        let kind = u16_at(reply, at + 2).ok_or_else(bad_reply)?;
        if len < 4 {
            return Err(bad_reply());
        }
        if kind == UNIX_DIAG_PEER {
            return u32_at(reply, at + 4).map(u64::from).ok_or_else(bad_reply);
        }
        // Attributes are 4-byte aligned.
        at += (len + 3) & !3;
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Whether fd `fd` of process `pid` is the socket with inode `inode`.
///
/// # Errors
/// Reading `/proc/PID/fd/FD` failed other than for a closed fd: `ENOENT`
/// for a process that is gone, `EACCES` when gmemd may not look (another
/// uid, gmemd not root).
pub fn holds_socket(pid: u32, fd: u32, inode: u64) -> io::Result<bool> {
    match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(target) => Ok(target.as_os_str() == format!("socket:[{inode}]").as_str()),
        // No such fd; the process is there (its fd directory is).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::metadata(format!("/proc/{pid}/fd")).map(|_| false)
        }
        Err(e) => Err(e),
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo`: `None` when its
/// process has exited or lives in a pid namespace gmemd cannot see.
///
/// # Errors
/// The fd is not a pidfd, or fdinfo is unreadable.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a pidfd"))?;
    let pid: i64 = pid
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd fdinfo"))?;
    // -1: exited; 0: in a pid namespace we cannot see.
    Ok(u32::try_from(pid).ok().filter(|p| *p > 0))
}

/// Whether the process of `pidfd` holds, as its fd `fd`, the client end of
/// the connection whose end in gmemd has inode `server_inode`.
///
/// # Errors
/// As [`peer_inode`], [`holds_socket`] and [`pidfd_pid`];
/// `ESRCH` when the process has exited.
pub fn process_holds_peer(pidfd: BorrowedFd<'_>, fd: u32, server_inode: u64) -> io::Result<bool> {
    let pid = pidfd_pid(pidfd)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    let held = holds_socket(pid, fd, peer_inode(server_inode)?)?;
    // The pidfd pins the identity: had the process exited and its pid been
    // reused during the scan, the pidfd would say so now.
    if pidfd_pid(pidfd)?.is_none() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(held)
}

/// Whether the process of a pidfd is still running (its pidfd turns
/// readable on exit, so pid reuse cannot fool this).
pub fn pidfd_alive(fd: &impl std::os::fd::AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(
        poll(&mut fds, Some(&rustix::event::Timespec::default())),
        Ok(0)
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use rustix::process::{pidfd_open, Pid, PidfdFlags};

    use super::*;

    #[test]
    fn the_peer_of_a_connection_is_found_by_its_inode() {
        let (server, client) = UnixStream::pair().unwrap();
        let peer = peer_inode(socket_inode(server.as_fd()).unwrap()).unwrap();
        assert_eq!(peer, socket_inode(client.as_fd()).unwrap());
        let me = std::process::id();
        let at = u32::try_from(client.as_raw_fd()).unwrap();
        assert!(holds_socket(me, at, peer).unwrap());
        // Another fd of ours is not the socket.
        let other = u32::try_from(server.as_raw_fd()).unwrap();
        assert!(!holds_socket(me, other, peer).unwrap());
        assert!(!holds_socket(me, 99_999, peer).unwrap());
        let own = pidfd_open(
            Pid::from_raw(i32::try_from(me).unwrap()).unwrap(),
            PidfdFlags::empty(),
        )
        .unwrap();
        assert_eq!(pidfd_pid(own.as_fd()).unwrap(), Some(me));
        let server_inode = socket_inode(server.as_fd()).unwrap();
        assert!(process_holds_peer(own.as_fd(), at, server_inode).unwrap());
        assert!(!process_holds_peer(own.as_fd(), other, server_inode).unwrap());
        drop(client);
        // Closed: no process holds it, and sock_diag knows no peer.
        assert!(!holds_socket(me, at, peer).unwrap());
        assert!(!process_holds_peer(own.as_fd(), at, server_inode).unwrap_or(false));
    }

    #[test]
    fn a_memfd_is_no_pidfd() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(pidfd_pid(fd.as_fd()).is_err());
    }

    #[test]
    fn sock_diag_replies_parse() {
        let mut reply = vec![0u8; 16 + 16];
        reply.extend_from_slice(&8u16.to_ne_bytes());
        reply.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        reply.extend_from_slice(&4711u32.to_ne_bytes());
        let len = u32::try_from(reply.len()).unwrap();
        reply[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_peer_reply(&reply).unwrap(), 4711);
        let mut error = vec![0u8; 20];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_peer_reply(&error).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(parse_peer_reply(&[1, 2]).is_err());
    }
}
