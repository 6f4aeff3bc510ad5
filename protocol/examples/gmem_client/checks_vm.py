"""As a VM lease: HELLO, CREATE/OPEN fds, BIND, STATUS, error replies,
frame-level refusals, names per VM, the 64-binding limit, UNBIND, DESTROY
and a framing error (§4–§9)."""

import errno
import fcntl
import mmap
import os
import sys

from .connection import Connection
from .expect import expect_closed, expect_error, lease_entry
from .wire import (
    ALL_FEATURES, CREATE_OPEN_EXISTING, FLAG_NEED_REPLY, FLAG_REPLY, KIND_GUEST_MEMFD,
    MAX_BINDINGS_PER_FILE, RAW_STATUS_QUERY, RAW_UNBIND, SECTION_FILES, SECTION_LEASES,
    STATUS, UNBIND, VERSION, uuid_from_name, uuid_text,
)


def vm_checks(path):
    vm_name, file_name, size = "py-vm", "py-ram0", 2 << 20
    uuid = uuid_from_name(vm_name)
    c = Connection(path)

    print("HELLO before HELLO? (a STATUS first)")
    expect_error("STATUS before HELLO", errno.EPROTO, c.status_page, SECTION_FILES, 0)

    features, lease = c.hello_vm(vm_name, uuid)
    print(f"HELLO as VM {vm_name} ({uuid_text(uuid)}): features {features:#x}, lease {lease}")
    assert lease >= 1 and features == ALL_FEATURES, (lease, features)

    fd, info = c.create(file_name, size)
    print(f"CREATE {file_name}: fd {fd}, {info}")
    assert info == {"size": size, "page_size": 4096, "kind": "memfd", "created": True}
    st = os.fstat(fd)
    assert st.st_size == size
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
        m[4096:4096 + 13] = b"hello, guest!"
    assert os.pread(fd, 13, 4096) == b"hello, guest!"
    print("  mmap + write at 0x1000, read back via pread: ok")
    try:
        os.ftruncate(fd, size * 2)
        raise AssertionError("ftruncate on a sealed memfd succeeded")
    except PermissionError:
        print("  ftruncate refused (sealed): ok")
    # §5.2: each reply fd of a memfd is a new open file description.
    fd_b, info_b = c.open(file_name)
    assert not info_b["created"]
    assert os.fstat(fd_b).st_ino == st.st_ino, "OPEN returned another file"
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    os.lseek(fd, 12345, os.SEEK_SET)
    assert os.lseek(fd_b, 0, os.SEEK_CUR) == 0, "CREATE and OPEN fds share a file offset"
    os.lseek(fd_b, 777, os.SEEK_SET)
    assert os.lseek(fd, 0, os.SEEK_CUR) == 12345
    os.close(fd_b)
    print("  OPEN gives the same file with its own file offset: ok")

    c.bind(0, 0x1_0000_0000, file_name, 0, size)
    print(f"BIND slot 0 gpa 0x100000000 -> {file_name} +0x0 size {size:#x}: ok")

    files = c.status_all(SECTION_FILES)
    mine = [f for f in files if f["name"] == file_name]
    print(f"STATUS files: {len(files)} file(s); {file_name}: {mine[0]}")
    assert mine[0]["owner"] == {"uuid": uuid_text(uuid), "name": vm_name, "lease": lease}
    assert mine[0]["bindings"] == [{"slot": 0, "gpa": 1 << 32, "offset": 0, "size": size}]

    me = lease_entry(c, lease)
    print(f"STATUS leases: this lease {me}")
    assert me["pid"] == os.getpid() and me["bindings"] == 1 and me["files"] == 1

    error_replies(c, file_name, size, vm_name, uuid, st.st_ino)
    frame_refusals(c, fd)

    # Another VM does not see the file at all: names are per VM (§8).
    other = Connection(path)
    other.hello_vm("py-vm2", uuid_from_name("py-vm2"))
    expect_error("OPEN of another VM's file (plain name)", errno.ENOENT, other.open, file_name)
    busy = Connection(path)
    expect_error("HELLO for a VM that has a lease", errno.EBUSY, busy.hello_vm, vm_name, uuid)
    busy.close()

    c.unbind(0)
    print("UNBIND slot 0: ok")
    after = [f for f in c.status_all(SECTION_FILES) if f["name"] == file_name][0]
    print(f"STATUS after UNBIND: owner {after['owner']}, bindings {after['bindings']}")
    assert after["owner"] is None and after["bindings"] == []
    names_per_vm(path, other, file_name, fd)

    binding_limit(path)

    c.destroy(file_name)
    print(f"DESTROY {file_name} (created by this lease): ok")
    assert os.pread(fd, 13, 4096) == b"hello, guest!"
    print("  our fd still reads the memory after DESTROY: ok")
    os.close(fd)

    # Framing error: a version-2 header closes the connection without a reply.
    other.send(STATUS, RAW_STATUS_QUERY.pack(0, 0), flags=2)
    how = expect_closed(other, "reply to a version-2 header")
    print(f"version-2 header: connection closed without reply ({how}): ok")
    other.close()
    c.close()


def error_replies(c, file_name, size, vm_name, uuid, ino):
    """§7.2, §7.4, §7.5 refusals on the lease that owns `file_name`."""
    print("error cases:")
    expect_error("BIND misaligned offset 0x800", errno.EINVAL, c.bind, 1, 0x2_0000_0000, file_name, 0x800, 4096)
    expect_error("BIND past the end", errno.ERANGE, c.bind, 1, 0x2_0000_0000, file_name, size, 4096)
    expect_error("BIND overlapping file range", errno.EBUSY, c.bind, 1, 0x2_0000_0000, file_name, 0, 4096)
    fd1, _ = c.create("py-ram1", 4 * 4096)
    expect_error("BIND slot already bound", errno.EEXIST, c.bind, 0, 0x2_0000_0000, "py-ram1", 0, 4096)
    expect_error("BIND overlapping guest range", errno.EADDRINUSE, c.bind, 1, (1 << 32) + 4096, "py-ram1", 0, 4096)
    c.destroy("py-ram1")
    os.close(fd1)
    expect_error("BIND unknown file", errno.ENOENT, c.bind, 1, 0x2_0000_0000, "nope", 0, 4096)
    expect_error("CREATE existing name", errno.EEXIST, c.create, file_name, size)
    expect_error("CREATE existing name with size 0 (name checked first)", errno.EEXIST,
                 c.create, file_name, 0)
    expect_error("CREATE OPEN_EXISTING with another size", errno.EEXIST,
                 c.create, file_name, 2 * size, 0, CREATE_OPEN_EXISTING)
    fd_c, info_c = c.create(file_name, size, 0, CREATE_OPEN_EXISTING)
    assert not info_c["created"] and os.fstat(fd_c).st_ino == ino
    os.close(fd_c)
    print("  CREATE OPEN_EXISTING with the same size and kind opens it: ok")
    expect_error("CREATE size 0", errno.EINVAL, c.create, "py-zero", 0)
    expect_error("CREATE kind guest_memfd", errno.EINVAL, c.create, "py-gmem", 4096, KIND_GUEST_MEMFD)
    expect_error("second HELLO", errno.EPROTO, c.hello_vm, vm_name, uuid)
    expect_error("UNBIND unbound slot", errno.ENOENT, c.unbind, 7)


def frame_refusals(c, some_fd):
    """§5.3 steps 2-5 on a well-framed message."""
    def raw(code, payload, fds=(), flags=VERSION, reply_fds=0):
        return c.call(code, payload, fds, reply_fds, flags)
    expect_error("unknown request code 77", errno.EOPNOTSUPP, raw, 77, b"")
    expect_error("REPLY flag on a request", errno.EINVAL,
                 raw, STATUS, RAW_STATUS_QUERY.pack(0, 0), (), VERSION | FLAG_REPLY)
    expect_error("STATUS with 7-byte payload", errno.EINVAL, raw, STATUS, b"\0" * 7)
    expect_error("STATUS carrying an fd", errno.EBADF, raw, STATUS, RAW_STATUS_QUERY.pack(0, 0), (some_fd,))
    expect_error("UNBIND with non-zero pad", errno.EINVAL, raw, UNBIND, RAW_UNBIND.pack(0, 1))
    raw(STATUS, RAW_STATUS_QUERY.pack(SECTION_LEASES, 0), (), VERSION | FLAG_NEED_REPLY)
    print("  NEED_REPLY flag accepted: ok")


def names_per_vm(path, other, file_name, fd):
    """§7.3, §7.4, §8: another VM (another process, too) reaches nothing of
    py-vm's namespace by name, and its own file of the same name is another
    file: nobody can pre-create a name another VM will use."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child = Connection(path)
            child.hello_vm("py-vm3", uuid_from_name("py-vm3"))
            expect_error("BIND of another VM's file (child process)", errno.ENOENT,
                         child.bind, 0, 0, file_name, 0, 4096)
            expect_error("DESTROY of another VM's file", errno.ENOENT, child.destroy, file_name)
            sys.stdout.flush()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - report and fail the child
            print(f"child: {e}")
            sys.stdout.flush()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child check failed"
    expect_error("BIND of another VM's file from the process that holds its fd",
                 errno.ENOENT, other.bind, 0, 0, file_name, 0, 4096)
    fd2, info = other.create(file_name, 4096)
    assert info["created"] and os.fstat(fd2).st_ino != os.fstat(fd).st_ino
    assert os.pread(fd2, 13, 0) == bytes(13)
    other.bind(0, 0, file_name, 0, 4096)
    print(f"  py-vm2 CREATEs and BINDs its own {file_name}: another file (zeros): ok")
    other.unbind(0)
    other.destroy(file_name)
    os.close(fd2)


def binding_limit(path):
    """§7.4: at most 64 bindings per file (ENOSPC), and such an entry fits a page (§9)."""
    vm = Connection(path)
    vm.hello_vm("py-many", uuid_from_name("py-many"))
    n = MAX_BINDINGS_PER_FILE
    fd, _ = vm.create("py-many-ram", (n + 1) * 4096)
    os.close(fd)
    for i in range(n):
        vm.bind(100 + i, 0x4000_0000 + i * 4096, "py-many-ram", i * 4096, 4096)
    expect_error(f"BIND a {n + 1}th binding of one file", errno.ENOSPC,
                 vm.bind, 100 + n, 0x4000_0000 + n * 4096, "py-many-ram", n * 4096, 4096)
    files = vm.status_all(SECTION_FILES)
    entry = [f for f in files if f["name"] == "py-many-ram"][0]
    assert len(entry["bindings"]) == n and [b["slot"] for b in entry["bindings"]] == list(range(100, 100 + n))
    print(f"  STATUS shows the file with its {n} bindings in one page: ok")
    vm.destroy("py-many-ram")  # bound: allowed to an operator, drops the bindings
    me = lease_entry(vm, vm.lease)
    assert me["bindings"] == 0 and me["files"] == 0, me
    print("  DESTROY of the bound file (operator) dropped its bindings: ok")
    vm.close()
