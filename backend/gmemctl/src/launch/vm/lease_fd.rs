//! The VM's lease, taken from its running QEMU.
//!
//! BIND and UNBIND need the VM's own lease, and gmemd allows one lease per
//! VM: so `gmemctl hotplug`, `unplug` and `upgrade` take a duplicate of the
//! lease socket from QEMU (`pidfd_getfd`, see [`crate::launch::process`]) and talk
//! on it with [`Client::resume`]. The socket's open file description is
//! shared with QEMU and the launcher, which never talk on it; the VM's lock
//! keeps two gmemctl commands off it at once.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use gmem_protocol::wire::{LeaseId, Name, VmId};
use gmem_protocol::{Client, ClientError};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvFlags};

use crate::launch::process::{Process, ProcessError};
use crate::launch::qemu::LEASE_FD;

/// Errors of taking the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFdError {
    /// `pidfd_getfd` failed.
    #[error(transparent)]
    Take(#[from] ProcessError),
    /// The fd is not a stream socket.
    #[error("fd {LEASE_FD} of QEMU (pid {pid}) is not the lease socket")]
    NotASocket {
        /// QEMU's pid.
        pid: u32,
    },
    /// gmemd does not know the lease the record names.
    #[error("gmemd has no lease {lease} for VM {vm} (the lease ended?)")]
    NoSuchLease {
        /// The lease id.
        lease: LeaseId,
        /// The VM.
        vm: Name,
    },
    /// Talking to gmemd failed.
    #[error("lease {lease}: gmemd did not answer")]
    Client {
        /// The lease id.
        lease: LeaseId,
        /// Cause.
        #[source]
        source: ClientError,
    },
}

/// Takes QEMU's lease socket and resumes the lease on it; checks with gmemd
/// that the socket is lease `lease` of `vm`.
///
/// # Errors
/// [`LeaseFdError`].
pub fn take_lease(
    qemu: &Process,
    vm: VmId,
    lease: LeaseId,
    timeout: Duration,
) -> Result<Client, LeaseFdError> {
    let fd = qemu.take_fd(LEASE_FD)?;
    let is_stream =
        rustix::net::sockopt::socket_type(&fd).is_ok_and(|t| t == rustix::net::SocketType::STREAM);
    if !is_stream {
        return Err(LeaseFdError::NotASocket { pid: qemu.pid() });
    }
    drain_stale_replies(&fd);
    let client_err = |source| LeaseFdError::Client { lease, source };
    let name = vm.name.clone();
    let uuid = vm.uuid;
    let mut client = Client::resume(UnixStream::from(fd), Some(vm), Some(lease));
    client.set_timeout(Some(timeout)).map_err(client_err)?;
    let leases = client.leases().map_err(client_err)?;
    if !leases.iter().any(|l| l.lease == lease && l.vm.uuid == uuid) {
        return Err(LeaseFdError::NoSuchLease { lease, vm: name });
    }
    Ok(client)
}

/// Discards replies a gmemctl that died mid-request left unread, so the
/// next request does not read them as its own. Uses `MSG_DONTWAIT` rather
/// than `O_NONBLOCK`, which would change the flag for QEMU's fd as well.
fn drain_stale_replies(fd: &OwnedFd) {
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    loop {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(
            fd.as_fd(),
            &mut iov,
            &mut cmsg,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) if r.bytes > 0 => drained += r.bytes,
            Ok(_) | Err(Errno::AGAIN) => break,
            Err(Errno::INTR) => {}
            Err(e) => {
                log::debug!("draining the lease socket: {e}");
                break;
            }
        }
        // Fds that came along are closed here.
        for message in cmsg.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = message {
                fds.for_each(drop);
            }
        }
    }
    if drained > 0 {
        log::warn!("discarded {drained} bytes of stale replies on the lease socket");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn stale_replies_are_drained_without_blocking() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"old reply bytes").unwrap();
        let fd = OwnedFd::from(a);
        drain_stale_replies(&fd);
        // Nothing left, and the fd is still blocking (flags untouched).
        let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        let mut buf = [0u8; 4];
        assert_eq!(
            rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::DONTWAIT).unwrap_err(),
            Errno::AGAIN
        );
    }
}
