"""HANDOFF (§7.11, feature 0x8): telling gmemd which process holds the lease
socket now, and as which fd. gmemd checks the claim against the kernel: that
fd of the pidfd's process must be this connection's socket."""

import errno
import os
import subprocess
import sys

from .connection import Connection
from .expect import expect_error, lease_entry
from .wire import ALL_FEATURES, FEATURE_HANDOFF, HANDOFF, RAW_HANDOFF, uuid_from_name

# A child that runs until its stdin is closed.
SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def spawn_sleeper(pass_fds=()):
    """A child process; it holds only the fds in `pass_fds` (and stdio).

    Popen returns once the child has exec'd, so the close-on-exec socket fds
    it got with fork are closed by then."""
    return subprocess.Popen(SLEEPER, stdin=subprocess.PIPE, pass_fds=pass_fds, close_fds=True)


def stop_sleeper(child):
    child.stdin.close()
    assert child.wait(timeout=30) == 0


def shown_pid(conn):
    entry = lease_entry(conn, conn.lease)
    assert entry is not None, f"lease {conn.lease} not in STATUS"
    assert entry["uid"] == os.getuid(), f"STATUS uid {entry['uid']} is not the connecting uid"
    return entry["pid"]


def handoff_checks(path, ctl):
    vm = Connection(path)
    features, _ = vm.hello_vm("py-handoff", uuid_from_name("py-handoff"))
    print(f"HANDOFF (lease {vm.lease}, features {features:#x}):")
    assert features & FEATURE_HANDOFF, "daemon did not negotiate HANDOFF"
    me = os.getpid()
    own = os.pidfd_open(me)
    at = vm.sock.fileno()

    # §5.3 steps 4 and 5.
    expect_error("HANDOFF without its fd", errno.EBADF, vm.call, HANDOFF, RAW_HANDOFF.pack(at, 0))
    expect_error("HANDOFF with flags 1", errno.EINVAL, vm.handoff, own, at, 1)

    # Our own pid, but an fd number that is not the socket: refused.
    expect_error("HANDOFF naming another fd of ours", errno.EPERM, vm.handoff, own, own)
    # Our own pid and the socket's fd number: accepted.
    pid = vm.handoff(own, at)
    assert pid == me, f"HANDOFF of our own pid {me} answered pid {pid}"
    assert shown_pid(vm) == me
    print(f"  HANDOFF of our own pid {me}: accepted, STATUS shows it: ok")

    # Not a pidfd.
    m = os.memfd_create("py-not-a-pidfd", os.MFD_CLOEXEC)
    expect_error("HANDOFF with a memfd", errno.EINVAL, vm.handoff, m, at)

    # A child that was given the lease socket (a launcher's VMM); pass_fds
    # keeps its number.
    holder = spawn_sleeper(pass_fds=(at,))
    holder_fd = os.pidfd_open(holder.pid)
    pid = vm.handoff(holder_fd, at)
    assert pid == holder.pid, f"HANDOFF to child {holder.pid} answered pid {pid}"
    assert shown_pid(vm) == holder.pid
    print(f"  HANDOFF to child {holder.pid} that holds the socket: accepted, STATUS shows it: ok")

    # A child without the socket: refused, and nothing changes.
    stranger = spawn_sleeper()
    stranger_fd = os.pidfd_open(stranger.pid)
    expect_error(f"HANDOFF to child {stranger.pid} that does not hold the socket",
                 errno.EPERM, vm.handoff, stranger_fd, at)
    assert shown_pid(vm) == holder.pid, "a refused HANDOFF changed the pid STATUS shows"

    # The named process exits: STATUS shows the connecting process again.
    stop_sleeper(holder)
    assert shown_pid(vm) == me, "STATUS still shows the exited HANDOFF process"
    print("  after that child exited, STATUS shows the connecting process again: ok")
    expect_error("HANDOFF to a child that has exited", errno.ESRCH, vm.handoff, holder_fd, at)
    stop_sleeper(stranger)
    for fd in (holder_fd, stranger_fd):
        os.close(fd)

    # Session kind and feature (§5.3 step 8 before step 9).
    expect_error("HANDOFF on a control session", errno.EPERM, ctl.handoff, own, at)
    expect_error("HANDOFF with a memfd on a control session", errno.EPERM, ctl.handoff, m, at)
    old = Connection(path)
    features, _ = old.hello_vm("py-handoff-old", uuid_from_name("py-handoff-old"),
                               ALL_FEATURES & ~FEATURE_HANDOFF)
    assert features == ALL_FEATURES & ~FEATURE_HANDOFF, f"{features:#x}"
    expect_error("HANDOFF without the negotiated feature", errno.EOPNOTSUPP, old.handoff, own, at)
    old_ctl = Connection(path)
    old_ctl.hello_control(ALL_FEATURES & ~FEATURE_HANDOFF)
    expect_error("HANDOFF on a control session without the feature", errno.EOPNOTSUPP,
                 old_ctl.handoff, own, at)
    for conn in (old, old_ctl, vm):
        conn.close()
    os.close(m)
    os.close(own)
