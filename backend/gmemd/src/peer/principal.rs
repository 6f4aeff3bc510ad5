//! A connection's principal as the kernel gives it at accept: uid
//! (`SO_PEERCRED`), cgroup (`/proc/PID/cgroup`, read while a pidfd pins the
//! process, so a recycled pid cannot answer for it) and security label
//! (`SO_PEERSEC`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::ledger::Peer;
use crate::principal::Principal;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// Longest label read; SELinux contexts are far shorter.
const MAX_LABEL: usize = 4096;

/// The principal of the peer `peer` of `stream`.
pub fn principal_of(stream: &UnixStream, peer: Peer) -> Principal {
    Principal {
        uid: peer.uid,
        cgroup: cgroup_of(stream, peer.pid),
        label: label_of(stream),
    }
}

/// The cgroup of the connecting process, `None` when it cannot be read
/// (gone, or in a pid namespace gmemd cannot see).
fn cgroup_of(stream: &UnixStream, pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let pidfd = peer_pidfd(stream);
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    // Still the process that connected: had it exited and its pid been
    // reused while we read, its pidfd would say so.
    if let Some(fd) = &pidfd {
        if !super::pidfd_alive(fd) {
            return None;
        }
    }
    parse_cgroup(&text)
}

/// The path in the `name=systemd` hierarchy (cgroup v1, as here) or else
/// the unified one (`0::`).
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers == "name=systemd" {
            return Some(path.to_owned());
        }
        if controllers.is_empty() {
            unified = Some(path.to_owned());
        }
    }
    unified
}

fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `fd` and `len` are live locals valid for writes of `len`
    // bytes; the socket is open, owned by `stream`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::addr_of_mut!(fd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new pidfd that nothing
    // else owns.
    (ret == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SO_PEERSEC`; `None` without an LSM that labels sockets (`ENOPROTOOPT`).
fn label_of(stream: &UnixStream) -> Option<String> {
    let mut buf = vec![0u8; MAX_LABEL];
    let mut len = libc::socklen_t::try_from(buf.len()).ok()?;
    // SAFETY: `buf` is valid for writes of `len` bytes and outlives the
    // call; the socket is open.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERSEC,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOPROTOOPT) {
            log::debug!("SO_PEERSEC: {e}");
        }
        return None;
    }
    buf.truncate(usize::try_from(len).ok()?);
    let label = String::from_utf8_lossy(&buf);
    let label = label.trim_end_matches('\0');
    (!label.is_empty()).then(|| label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_hierarchy_wins_on_v1_and_v2_is_read_alone() {
        let v1 = "12:memory:/user.slice\n1:name=systemd:/user.slice/a.scope\n0::/other\n";
        assert_eq!(parse_cgroup(v1).as_deref(), Some("/user.slice/a.scope"));
        assert_eq!(
            parse_cgroup("0::/machine.slice/x.scope\n").as_deref(),
            Some("/machine.slice/x.scope")
        );
        assert_eq!(parse_cgroup("garbage\n"), None);
    }

    #[test]
    fn our_own_principal_is_read() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = crate::peer::peer_of(&a).unwrap();
        let p = principal_of(&a, peer);
        assert_eq!(p.uid, rustix::process::getuid().as_raw());
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(p.cgroup, parse_cgroup(&own));
        // No LSM here labels sockets.
        assert_eq!(p.label, label_of(&a));
    }
}
