#!/usr/bin/env python3
"""A minimal gmemd client written from protocol/PROTOCOL.md alone.

Python 3.9+ standard library only. Usage:

    python3 protocol/examples/gmem_client SOCKET_PATH

runs a short scenario against a live gmemd: HELLO as a VM, CREATE a memfd
(mmap it, write and read back; reply fds are their own open file
descriptions), BIND, STATUS (files and leases), error cases, the 64-binding
limit, names per VM, UNBIND, DESTROY; then, as an operator control session,
DEPOSIT (sealed only once accepted, hugetlb memfds refused), STATUS paging
and the clamped cursor, DESTROY of a VM's bound file, one name one UUID at
HELLO, REVOKE, SCRUB; feature VM_SCOPE: scoped names, TRANSFER of an
operators' file into a VM (a fresh inode: the creator's old fd reads zeros
and its writes never reach the VM) and back, FORGET; HANDOFF (to our own
pid, to a child that holds the lease socket, refused for a child that does
not, for a non-pidfd, an exited process, a control session and without the
feature); a REVOKE with hundreds of requests in flight (each answered,
ECONNABORTED after the served ones, then the close), and guest_memfd
deposits when /dev/kvm is usable. Run as root, it also connects as uid
65534 (nobody): with gmemd's default uid lists that peer must get EACCES
and a closed connection for anything it sends; if gmemd was started with
`--allow-uid 65534` (and 65534 is not an operator), the non-operator rules
are checked instead (refusals, a VM tied to another principal, scoped
names, need-to-know STATUS). Exits non-zero if anything is not as the spec
says, and prints "all checks passed" last otherwise.

Files: wire.py (layouts, encode/decode), connection.py (framing, fd
passing, requests), expect.py (assertion helpers), checks_*.py (scenarios).
"""

import os
import sys

if not __package__:
    # Run as `python3 .../gmem_client`: Python put this directory itself on
    # sys.path. Put its parent there instead, so that the modules import as
    # the package gmem_client (their imports are relative).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from gmem_client.checks_guest_memfd import guest_memfd_checks  # noqa: E402
from gmem_client.checks_handoff import handoff_checks  # noqa: E402
from gmem_client.checks_operator import operator_checks  # noqa: E402
from gmem_client.checks_other_uid import other_uid_checks  # noqa: E402
from gmem_client.checks_revoke_inflight import revoke_in_flight_checks  # noqa: E402
from gmem_client.checks_tenants import tenant_checks  # noqa: E402
from gmem_client.checks_vm import vm_checks  # noqa: E402
from gmem_client.connection import Connection  # noqa: E402


def default_socket():
    """gmemd's default socket path (§3), for a daemon started without --socket."""
    if os.environ.get("GMEMD_SOCKET"):
        return os.environ["GMEMD_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        state = os.path.join(os.environ["XDG_RUNTIME_DIR"], "gmemd")
    elif os.getuid() == 0:
        state = "/run/gmemd"
    else:
        state = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gmemd-{os.getuid()}")
    return os.path.join(state, "gmemd.sock")


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 2
    path = argv[1] if len(argv) > 1 else default_socket()
    vm_checks(path)
    # One operator control session for the rest (§6.1: gmemd's uid and 0).
    ctl = Connection(path)
    ctl.hello_control()
    operator_checks(path, ctl)
    tenant_checks(path, ctl)
    handoff_checks(path, ctl)
    revoke_in_flight_checks(path, ctl)
    guest_memfd_checks(path, ctl)
    other_uid_checks(path, ctl)
    ctl.close()
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
