"""Assertions shared by the scenarios: expected refusals, closed connections,
and look-ups in STATUS tables."""

import errno

from .connection import GmemError
from .wire import SECTION_FILES, SECTION_LEASES


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
