"""As an operator control session: DEPOSIT of memfds, STATUS paging and
the daemon entry, DESTROY of a VM's bound file (by scoped name), one name
one UUID at HELLO, REVOKE and SCRUB, RESTART without its feature (§6.5,
§7.6, §7.7, §7.9, §7.10, §7.14, §9). Needs the peer uid to
be an operator (the default for gmemd's own uid and root)."""

import errno
import fcntl
import os
import time

from .connection import Connection
from .expect import expect_closed, expect_error, lease_entry
from .wire import (
    ALL_FEATURES, DEPOSIT, FEATURE_RESTART, FILES_PER_PAGE, KIND_GUEST_MEMFD,
    KIND_HUGETLB_2M, KIND_SECRET, RAW_DEPOSIT, SECTION_DAEMON, SECTION_FILES,
    SECTION_LEASES, decode_status_page, name_field, uuid_from_name,
)

F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW = 0x1, 0x2, 0x4


def seals_of(fd):
    return fcntl.fcntl(fd, F_GET_SEALS)


def operator_checks(path, ctl):
    features, lease = ctl.features, ctl.lease
    print(f"HELLO control session: features {features:#x}, lease {lease}")
    assert lease == 0 and features == ALL_FEATURES, (lease, features)

    m = os.memfd_create("py-dep", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(m, 8192)
    info = ctl.deposit("py-dep", m)
    seals = seals_of(m)
    print(f"DEPOSIT memfd py-dep: {info}, seals now {seals:#x}")
    assert info["created"] and info["size"] == 8192
    assert seals & (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW) == 0x7
    os.close(m)
    unsealable = os.memfd_create("py-nosealing", os.MFD_CLOEXEC)
    os.ftruncate(unsealable, 8192)
    expect_error("DEPOSIT memfd made without MFD_ALLOW_SEALING", errno.EINVAL,
                 ctl.deposit, "py-nosealing", unsealable)
    os.close(unsealable)
    expect_error("DEPOSIT without its fd", errno.EBADF,
                 ctl.call, DEPOSIT, RAW_DEPOSIT.pack(0, 0, name_field("x")))
    expect_error("DEPOSIT guest_memfd from a control session", errno.EPERM,
                 ctl.deposit, "py-gmem", ctl.sock.fileno(), KIND_GUEST_MEMFD)
    deposit_checks(ctl)
    ctl.destroy("py-dep")

    paging(ctl)
    daemon_entry(path, ctl)
    destroy_bound_of_other_vm(path, ctl)
    one_name_one_uuid(path, ctl)
    revoke_bound(path, ctl)


def deposit_checks(ctl):
    """§7.6: the fd is checked completely before gmemd seals it."""
    m = os.memfd_create("py-odd", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(m, 5000)
    expect_error("DEPOSIT memfd of 5000 bytes", errno.EINVAL, ctl.deposit, "py-odd", m)
    assert seals_of(m) == 0, "refused deposit was sealed"
    os.ftruncate(m, 8192)
    expect_error("DEPOSIT under an existing name", errno.EEXIST, ctl.deposit, "py-dep", m)
    assert seals_of(m) == 0, "refused deposit was sealed"
    print("  refused deposits leave the memfd unsealed: ok")
    expect_error("DEPOSIT kind hugetlb-2m", errno.EINVAL, ctl.deposit, "py-odd", m, KIND_HUGETLB_2M)
    expect_error("DEPOSIT kind secret", errno.EINVAL, ctl.deposit, "py-odd", m, KIND_SECRET)
    # Already sealed SHRINK|GROW (no SEAL): accepted, and sealed SEAL too (§7.6).
    fcntl.fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
    info = ctl.deposit("py-odd", m)
    assert info["size"] == 8192 and seals_of(m) == F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL
    print("  memfd sealed SHRINK|GROW already: accepted, F_SEAL_SEAL added: ok")
    ctl.destroy("py-odd")
    os.close(m)
    try:
        h = os.memfd_create("py-huge", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.ftruncate(h, 2 << 20)
    except OSError as e:
        print(f"  (hugetlb memfd unavailable here: {e}; skipping its DEPOSIT check)")
        return
    expect_error("DEPOSIT a hugetlb memfd as memfd", errno.EINVAL, ctl.deposit, "py-huge", h)
    assert seals_of(h) == 0
    os.close(h)


def paging(ctl):
    """§9: 30 files of 4 KiB (23 entries without bindings fit a page); the
    cursor is clamped to the total."""
    names = [f"py-page-{i:02}" for i in range(30)]
    for n in names:
        fd, _ = ctl.create(n, 4096)
        os.close(fd)
    pages, start = [], 0
    while True:
        total, count, nxt, _ = decode_status_page(SECTION_FILES, ctl.status_page(SECTION_FILES, start))
        pages.append(count)
        if count == 0 or nxt >= total:
            break
        start = nxt
    print(f"STATUS files paging over {total} files: page sizes {pages}")
    assert sum(pages) == total == 30 and pages[0] == FILES_PER_PAGE, (pages, total)
    for start in (total, 1000):
        t, count, nxt, _ = decode_status_page(SECTION_FILES, ctl.status_page(SECTION_FILES, start))
        print(f"STATUS start {start}: total {t} count {count} next {nxt}")
        assert (t, count, nxt) == (total, 0, total), "cursor not clamped to total"
    for n in names:
        ctl.destroy(n)


def daemon_entry(path, ctl):
    """§9 section 3: one entry that counts what sections 0 and 1 hold; §7.14:
    RESTART needs its feature (refused, it restarts nothing)."""
    d = ctl.daemon_status()
    print(f"STATUS daemon: pid {d['pid']}, {d['restarts']} restart(s), "
          f"{d['files']} file(s), {d['leases']} lease(s), recovered {d['recovered']!r}")
    assert d["pid"] > 0, d
    assert 0 < d["born"] <= d["started"] <= time.time() + 1, d
    assert d["files"] == len(ctl.status_all(SECTION_FILES)), d
    assert d["leases"] == len(ctl.status_all(SECTION_LEASES)), d
    assert decode_status_page(SECTION_DAEMON, ctl.status_page(SECTION_DAEMON, 1)) == (1, 0, 1, [])
    old = Connection(path)
    features, _ = old.hello_control(ALL_FEATURES & ~FEATURE_RESTART)
    assert features == ALL_FEATURES & ~FEATURE_RESTART, f"{features:#x}"
    expect_error("RESTART without its feature", errno.EOPNOTSUPP, old.restart)
    old.close()
    assert ctl.daemon_status()["restarts"] == d["restarts"], "a refused RESTART restarted gmemd"


def destroy_bound_of_other_vm(path, ctl):
    """§7.7: an operator destroys any file, dropping the owner's bindings.
    A VM's file is named in the VM's namespace (§7.3); a plain name on a
    control session is an operators' file."""
    vm = Connection(path)
    vm.hello_vm("py-owner", uuid_from_name("py-owner"))
    fd, _ = vm.create("py-owned", 3 * 4096)
    os.close(fd)
    vm.bind(1, 0, "py-owned", 0, 4096)
    vm.bind(2, 1 << 20, "py-owned", 4096, 4096)
    expect_error("DESTROY of a VM's file by plain name on a control session", errno.ENOENT,
                 ctl.destroy, "py-owned")
    ctl.destroy_in("py-owned", vm_name="py-owner")
    me = lease_entry(ctl, vm.lease)
    assert me["bindings"] == 0 and me["files"] == 0, me
    expect_error("UNBIND a slot whose file an operator destroyed", errno.ENOENT, vm.unbind, 1)
    print("DESTROY (operator control session) of another VM's bound file: ok, its bindings are gone")
    vm.close()


def one_name_one_uuid(path, ctl):
    """§6.5, §7.1, §7.9: while a VM is known, its name is not another UUID's
    and its UUID not another name's (EEXIST, the connection still awaits
    HELLO); REVOKE by name therefore always names one VM."""
    a, b = Connection(path), Connection(path)
    a.hello_vm("py-twin", uuid_from_name("py-twin"))
    expect_error("HELLO with a known VM name and another UUID", errno.EEXIST,
                 b.hello_vm, "py-twin", uuid_from_name("py-twin-b"))
    expect_error("HELLO with a known UUID and another name", errno.EEXIST,
                 b.hello_vm, "py-twin-b", uuid_from_name("py-twin"))
    b.hello_vm("py-twin-b", uuid_from_name("py-twin-b"))
    print("  HELLO after two refused ones, on the same connection: ok")
    report = ctl.revoke(uuid_from_name("py-twin-b"))
    assert report == {"leases": 1, "bindings": 0, "scrubbed": 0}, report
    report = ctl.revoke(vm_name="py-twin")
    assert report["leases"] == 1
    left = [entry for entry in ctl.status_all(SECTION_LEASES) if entry["name"].startswith("py-twin")]
    assert left == [], left
    print("  REVOKE by UUID, then by name: ok")
    for conn in (a, b):
        expect_closed(conn, "revoked connection")
        conn.close()


def revoke_bound(path, ctl):
    """§7.9, §7.10: REVOKE a VM that has a bound file: its lease ends and the
    file's content is destroyed; then SCRUB."""
    vm = Connection(path)
    vm.hello_vm("py-victim", uuid_from_name("py-victim"))
    fd, _ = vm.create("py-victim-ram", 8192)
    os.pwrite(fd, b"secret", 0)
    vm.bind(3, 0, "py-victim-ram", 0, 8192)
    report = ctl.revoke(vm_name="py-victim")
    print(f"REVOKE name py-victim: {report}")
    assert report == {"leases": 1, "bindings": 1, "scrubbed": 1}
    expect_closed(vm, "revoked connection")
    print("  revoked VM's connection closed by gmemd: ok")
    assert os.pread(fd, 6, 0) == bytes(6)
    print("  old fd reads zeros after REVOKE: ok")
    fd2, _ = ctl.open_in("py-victim-ram", vm_name="py-victim")
    assert os.fstat(fd2).st_ino != os.fstat(fd).st_ino
    print("  OPEN (scoped) after REVOKE returns a fresh inode: ok")
    expect_error("REVOKE unknown VM", errno.ENOENT, ctl.revoke, uuid_from_name("nobody"))
    ctl.scrub_in("py-victim-ram", uuid_from_name("py-victim"))
    print("SCRUB py-victim/py-victim-ram: ok")
    ctl.destroy_in("py-victim-ram", vm_name="py-victim")
    for f in (fd, fd2):
        os.close(f)
    vm.close()
