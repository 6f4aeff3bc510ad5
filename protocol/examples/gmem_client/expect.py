"""Assertions shared by the scenarios: expected refusals, closed connections,
and look-ups in STATUS tables."""

import errno
import time

from .connection import GmemError
from .wire import SECTION_FILES, SECTION_LEASES, SECTION_SCOPED_FILES


def expect_error(what, want, fn, *args):
    """Calls fn(*args), which must be refused with errno `want`."""
    try:
        fn(*args)
    except GmemError as e:
        assert e.errno == want, f"{what}: got errno {e.errno}, want {want}: {e.text}"
        print(f"  {what}: -{errno.errorcode[e.errno]} ({-e.errno}) {e.text!r}")
        return e
    raise AssertionError(f"{what}: succeeded, expected errno {want}")


def expect_closed(conn, what):
    """The daemon closed `conn` without another message: EOF or ECONNRESET (§4.4)."""
    try:
        conn.recv()
    except (EOFError, ConnectionResetError) as e:
        return type(e).__name__
    raise AssertionError(f"{what}: connection still open")


def lease_entry(conn, lease):
    """The STATUS leases entry of lease id `lease`, or None."""
    found = [entry for entry in conn.status_all(SECTION_LEASES) if entry["lease"] == lease]
    assert len(found) <= 1, found
    return found[0] if found else None


def file_names(conn):
    return [entry["name"] for entry in conn.status_all(SECTION_FILES)]


def scoped_files(conn, name=None):
    """STATUS section 2 entries (§9), those of file `name` if given."""
    return [e for e in conn.status_all(SECTION_SCOPED_FILES) if name is None or e["name"] == name]


def wait_until(what, predicate, timeout=10.0):
    """Polls `predicate` every 10 ms until it is true; fails after `timeout` s.
    gmemd sees a closed connection on its own time, so what follows from a
    close (a lease's end) is waited for, never assumed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
