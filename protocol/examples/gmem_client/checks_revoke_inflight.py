"""Requests in flight at a REVOKE (§5.3 step 6, §6.2, §6.4, §7.9): each is
answered, the served ones first, then ECONNABORTED, then the connection ends.
Checks 1-5 of §5.3 still come first: a malformed request in flight gets its
own errno, not ECONNABORTED."""

import errno
import os

from .connection import Connection
from .expect import expect_closed, lease_entry
from .wire import (
    FILES_PER_PAGE, HELLO, MAX_IN_FLIGHT_AT_REVOKE, RAW_HELLO, RAW_STATUS_QUERY,
    SECTION_FILES, STATUS, decode_status_page, name_field, uuid_from_name,
)

# 300 replies of ~4 KiB (~1.2 MiB) are far more than a Unix socket buffers
# (about 200 KiB by default), so gmemd has to stop reading this connection
# (backpressure, §6.2) with most of the requests still unread when the REVOKE
# comes; all of them stay within the 1024 that are answered.
REQUESTS = 300


def tail(vm):
    """(what, code, frame, errno) sent after the STATUS requests: §5.3 steps
    3 and 5 come before step 6, step 7 (second HELLO) after it."""
    hello = RAW_HELLO.pack(0, 0, 0, uuid_from_name("py-other"), name_field("py-other"))
    return [
        ("unknown request code 77", 77, vm.frame(77, b""), errno.EOPNOTSUPP),
        ("STATUS with a 7-byte payload", STATUS, vm.frame(STATUS, b"\0" * 7), errno.EINVAL),
        ("second HELLO", HELLO, vm.frame(HELLO, hello), errno.ECONNABORTED),
    ]


def revoke_in_flight_checks(path, ctl):
    vm_name = "py-inflight"
    uuid = uuid_from_name(vm_name)
    # Enough files that a files page is full (~4 KiB per STATUS reply).
    names = [f"py-fill-{i:02}" for i in range(FILES_PER_PAGE)]
    for n in names:
        fd, _ = ctl.create(n, 4096)
        os.close(fd)
    vm = Connection(path)
    vm.hello_vm(vm_name, uuid)
    lease = vm.lease
    print(f"REVOKE with {REQUESTS} STATUS requests in flight on lease {lease}:")

    frame = vm.frame(STATUS, RAW_STATUS_QUERY.pack(SECTION_FILES, 0))
    extra = tail(vm)
    assert REQUESTS + len(extra) <= MAX_IN_FLIGHT_AT_REVOKE
    # No fds: several messages in one send are fine (§5.1).
    vm.sock.sendall(frame * REQUESTS + b"".join(f for _, _, f, _ in extra))
    report = ctl.revoke(uuid)
    print(f"  REVOKE: {report}")
    assert report == {"leases": 1, "bindings": 0, "scrubbed": 0}, report
    assert lease_entry(ctl, lease) is None, "lease still listed after its REVOKE was answered"

    served = aborted = 0
    for i in range(REQUESTS):
        try:
            reply = vm.read_reply(STATUS)
        except (EOFError, ConnectionResetError) as e:
            raise AssertionError(f"connection ended before the reply to request {i + 1} "
                                 f"of {REQUESTS} ({type(e).__name__})") from e
        if reply.errno == 0:
            assert aborted == 0, f"request {i + 1} was served after an ECONNABORTED"
            total, count, _, _ = decode_status_page(SECTION_FILES, reply.body)
            assert total >= FILES_PER_PAGE and count >= 1, (total, count)
            served += 1
        else:
            assert reply.errno == errno.ECONNABORTED, \
                f"request {i + 1}: errno {reply.errno} ({reply.text!r}), want ECONNABORTED"
            if aborted == 0:
                print(f"  first ECONNABORTED text: {reply.text!r}")
            aborted += 1
    print(f"  {served} served, then {aborted} answered ECONNABORTED: ok")
    assert aborted >= 1, ("no request was in flight at the REVOKE: the socket buffers held "
                          f"all {REQUESTS} replies, so this check tested nothing")
    for what, code, _, want in extra:
        reply = vm.read_reply(code)
        assert reply.errno == want, f"{what} in flight: errno {reply.errno} ({reply.text!r}), want {want}"
        print(f"  {what} in flight: -{errno.errorcode[want]}: ok")
    how = expect_closed(vm, "connection after the answers to a REVOKE")
    print(f"  then the connection ended ({how}): ok")
    try:
        vm.send(STATUS, RAW_STATUS_QUERY.pack(SECTION_FILES, 0))
        raise AssertionError("a write on the revoked connection succeeded")
    except BrokenPipeError:
        print("  a later write fails with EPIPE: ok")
    vm.close()
    for n in names:
        ctl.destroy(n)
