"""As another uid (§5.3 step 1, §6.1, §7): run as root, the checks connect
as uid 65534 (nobody) from a child process. With gmemd's default uid lists
that peer gets EACCES and a closed connection for anything it sends; if
gmemd was started with `--allow-uid 65534` (and 65534 is not an operator),
the non-operator rules are checked instead: DESTROY, CREATE, OPEN, DEPOSIT,
REVOKE, SCRUB, TRANSFER, FORGET and RESTART, a VM tied to another principal (§6.5),
scoped names and need-to-know STATUS."""

import errno
import os
import sys

from .connection import Connection, GmemError
from .expect import expect_closed, expect_error, file_names, lease_entry
from .wire import (
    FLAG_REPLY, HELLO, HELLO_CONTROL, KIND_HUGETLB_2M, RAW_HELLO, RAW_STATUS_QUERY,
    SECTION_LEASES, SECTION_SCOPED_FILES, STATUS, VERSION, uuid_from_name,
)

OTHER_UID = 65534  # nobody


def other_uid_checks(path, ctl):
    if os.getuid() != 0:
        print("(not root: skipping the checks as another uid)")
        return
    # The state directory is usually 0700: reach the 0666 socket through an
    # O_PATH fd opened while still root. SO_PEERCRED records the uid at connect.
    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    # A file of the parent's own lease and one of an operator control session.
    owner = Connection(path)
    owner.hello_vm("py-root-vm", uuid_from_name("py-root-vm"))
    fd, _ = owner.create("py-root-file", 4096)
    os.close(fd)
    fd, _ = ctl.create("py-ctl-file", 4096)
    os.close(fd)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            as_other_uid(f"/proc/self/fd/{pfd}")
            code = 0
        except BaseException as e:  # noqa: BLE001 - report and fail the child
            print(f"uid {OTHER_UID} child: {type(e).__name__}: {e}")
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.close(pfd)
    assert os.waitstatus_to_exitcode(status) == 0, f"checks as uid {OTHER_UID} failed"
    ctl.destroy_in("py-root-file", vm_name="py-root-vm")
    ctl.destroy("py-ctl-file")
    if "py-np-old" in file_names(ctl):
        ctl.destroy_in("py-np-old", vm_name="py-np-vm")  # left by the non-operator's ended lease
    owner.close()


def as_other_uid(path):
    c = Connection(path)
    # Malformed on purpose (unknown code): an allowed peer gets EOPNOTSUPP, a
    # not-allowed one EACCES before any syntax check, then the close.
    try:
        c.call(77, b"")
        raise AssertionError("unknown request code accepted")
    except GmemError as e:
        if e.errno == errno.EACCES:
            not_allowed(path, c, e)
            return
        assert e.errno == errno.EOPNOTSUPP, e
    c.close()
    non_operator(path)


def not_allowed(path, c, first):
    print(f"uid {OTHER_UID} is not allowed:")
    print(f"  unknown request code: -EACCES {first.text!r}")
    expect_closed(c, "after EACCES")
    c.close()
    print("  connection closed after EACCES: ok")
    for what, code, payload, flags in [
            ("well-formed control HELLO", HELLO, RAW_HELLO.pack(7, HELLO_CONTROL, 0, bytes(16), bytes(64)), VERSION),
            ("STATUS with the REPLY flag", STATUS, RAW_STATUS_QUERY.pack(0, 0), VERSION | FLAG_REPLY),
            ("STATUS with a 3-byte payload", STATUS, b"\0\0\0", VERSION)]:
        c = Connection(path)
        expect_error(what, errno.EACCES, c.call, code, payload, (), 0, flags)
        expect_closed(c, what)
        c.close()
    print("  every message gets EACCES and the close: ok")


def non_operator(path):
    print(f"uid {OTHER_UID} is allowed, not an operator:")
    ctl = Connection(path)
    ctl.hello_control()
    expect_error("control CREATE", errno.EPERM, ctl.create, "py-np-x", 4096)
    expect_error("control OPEN", errno.EPERM, ctl.open, "py-ctl-file")
    m = os.memfd_create("py-np", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(m, 4096)
    expect_error("control DEPOSIT memfd", errno.EPERM, ctl.deposit, "py-np-x", m)
    expect_error("control DEPOSIT kind hugetlb-2m", errno.EPERM, ctl.deposit, "py-np-x", m, KIND_HUGETLB_2M)
    os.close(m)
    expect_error("REVOKE", errno.EPERM, ctl.revoke, uuid_from_name("py-root-vm"))
    expect_error("SCRUB", errno.EPERM, ctl.scrub, "py-ctl-file")
    expect_error("TRANSFER", errno.EPERM, ctl.transfer, ("py-ctl-file",),
                 ("py-x", uuid_from_name("py-root-vm")))
    expect_error("FORGET", errno.EPERM, ctl.forget, uuid_from_name("py-root-vm"))
    expect_error("RESTART", errno.EPERM, ctl.restart)
    expect_error("control DESTROY of an operators' file", errno.EPERM, ctl.destroy, "py-ctl-file")
    expect_error("control DESTROY of an unknown file", errno.EPERM, ctl.destroy, "py-nothing")
    # Need to know (§9): none of root's VMs or the operators' files.
    assert file_names(ctl) == [], file_names(ctl)
    assert ctl.status_all(SECTION_LEASES) == []
    print("  STATUS of a non-operator control session shows nothing of others: ok")

    # §6.5: py-root-vm is tied to uid 0.
    thief = Connection(path)
    expect_error("HELLO as another principal's VM", errno.EACCES, thief.hello_vm,
                 "py-root-vm", uuid_from_name("py-root-vm"))
    thief.close()

    old = Connection(path)
    old.hello_vm("py-np-vm", uuid_from_name("py-np-vm"))
    fd, _ = old.create("py-np-old", 4096)
    os.close(fd)
    old.close()  # its lease ends; py-np-old stays in py-np-vm's namespace
    vm = Connection(path)
    vm.hello_vm("py-np-vm2", uuid_from_name("py-np-vm2"))
    expect_error("DESTROY a file of another uid's VM", errno.ENOENT, vm.destroy, "py-root-file")
    expect_error("DESTROY an operators' file", errno.ENOENT, vm.destroy, "py-ctl-file")
    expect_error("DESTROY a file of another VM (same uid)", errno.ENOENT, vm.destroy, "py-np-old")
    expect_error("scoped OPEN of another VM's file", errno.EPERM, vm.open_in, "py-root-file",
                 uuid_from_name("py-root-vm"))
    expect_error("scoped OPEN of an operators' file", errno.EPERM, vm.open_in, "py-ctl-file")
    fd, _ = vm.create("py-np-own", 2 * 4096)
    os.close(fd)
    fd, _ = vm.open_in("py-np-own", vm_name="py-np-vm2")
    os.close(fd)
    print("  scoped OPEN of the own VM's file: ok")
    vm.bind(0, 0, "py-np-own", 0, 4096)
    expect_error("DESTROY of the own file while bound", errno.EBUSY, vm.destroy, "py-np-own")
    names = [e["name"] for e in vm.status_all(SECTION_SCOPED_FILES)]
    assert names == ["py-np-own"], names
    leases = vm.status_all(SECTION_LEASES)
    assert [e["lease"] for e in leases] == [vm.lease], leases
    assert lease_entry(vm, vm.lease)["files"] == 1
    print("  STATUS of a non-operator lease shows its own VM only: ok")
    # A control session of the same principal sees the VMs tied to it (§9).
    assert sorted(file_names(ctl)) == ["py-np-old", "py-np-own"], file_names(ctl)
    assert [e["lease"] for e in ctl.status_all(SECTION_LEASES)] == [vm.lease]
    print("  STATUS of its control session shows the VMs tied to uid 65534: ok")
    vm.unbind(0)
    vm.destroy("py-np-own")
    print("  DESTROY of the own, unbound file: ok")
    vm.close()
    ctl.close()
