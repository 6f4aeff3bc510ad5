#!/usr/bin/env python3
"""A minimal gmemd client written from protocol/PROTOCOL.md alone.

Python 3 standard library only. Usage:

    gmem_client.py SOCKET_PATH

runs a short scenario against a live gmemd: HELLO as a VM, CREATE a memfd
(mmap it, write and read back; reply fds are their own open file
descriptions), BIND, STATUS (files and leases), error cases, the 64-binding
limit, holders, UNBIND, DESTROY; then, as an operator control session,
DEPOSIT (sealed only once accepted, hugetlb memfds refused), STATUS paging
and the clamped cursor, DESTROY of another VM's bound file, REVOKE (also an
ambiguous name), SCRUB, and guest_memfd deposits when /dev/kvm is usable.
Run as root, it also connects as uid 65534 (nobody): with gmemd's default
uid lists that peer must get EACCES and a closed connection for anything it
sends; if gmemd was started with `--allow-uid 65534` (and 65534 is not an
operator), the non-operator rules of DESTROY, CREATE, OPEN, DEPOSIT, REVOKE
and SCRUB are checked instead. Exits non-zero if anything is not as the
spec says.
"""

import errno
import fcntl
import mmap
import os
import socket
import struct
import sys
import time

# --- constants (PROTOCOL.md §4, §6.3, §7) --------------------------------

HEADER = struct.Struct("<III")  # request, flags, size
HEADER_SIZE = 12
MAX_PAYLOAD = 4096
MAX_FDS = 8
VERSION = 1
FLAG_REPLY = 0x4

HELLO, CREATE, OPEN, BIND, UNBIND, DEPOSIT, DESTROY, STATUS, REVOKE, SCRUB = range(1, 11)
REQUEST_NAMES = {
    1: "HELLO", 2: "CREATE", 3: "OPEN", 4: "BIND", 5: "UNBIND",
    6: "DEPOSIT", 7: "DESTROY", 8: "STATUS", 9: "REVOKE", 10: "SCRUB",
}

FEATURE_DEPOSIT, FEATURE_SCRUB, FEATURE_REVOKE = 0x1, 0x2, 0x4
HELLO_CONTROL = 0x1
CREATE_OPEN_EXISTING = 0x1
FILE_CREATED = 0x1

KIND_NAMES = {0: "memfd", 1: "hugetlb-2m", 2: "hugetlb-1g", 3: "secret", 4: "guest_memfd"}
KIND_MEMFD, KIND_HUGETLB_2M, KIND_SECRET, KIND_GUEST_MEMFD = 0, 1, 3, 4
MAX_BINDINGS_PER_FILE = 64
SECTION_FILES, SECTION_LEASES = 0, 1

# Payload / body layouts (packed, little-endian).
RAW_HELLO = struct.Struct("<QII16s64s")          # 96
RAW_HELLO_REPLY = struct.Struct("<QQII")         # 24
RAW_CREATE = struct.Struct("<QII64s")            # 80
RAW_FILE_REPLY = struct.Struct("<QQII")          # 24
RAW_NAME = struct.Struct("<64s")                 # 64
RAW_BIND = struct.Struct("<IIQQQ64s")            # 96
RAW_UNBIND = struct.Struct("<II")                # 8
RAW_STATUS_QUERY = struct.Struct("<II")          # 8
RAW_STATUS_PAGE = struct.Struct("<IIII")         # 16
RAW_FILE_ENTRY = struct.Struct("<QQII16sQ64s64s")  # 176
RAW_BINDING_ENTRY = struct.Struct("<IIQQQ")      # 32
RAW_LEASE_ENTRY = struct.Struct("<QIIIIQ16s64s")  # 112
RAW_REPLY_HEAD = struct.Struct("<iI")            # 8
RAW_DEPOSIT = struct.Struct("<II64s")            # 72
RAW_VM_SELECTOR = struct.Struct("<16s64s")       # 80
RAW_REVOKE_REPLY = struct.Struct("<IIII")        # 16

for s, n in [(RAW_HELLO, 96), (RAW_HELLO_REPLY, 24), (RAW_CREATE, 80), (RAW_FILE_REPLY, 24),
             (RAW_NAME, 64), (RAW_BIND, 96), (RAW_UNBIND, 8), (RAW_STATUS_QUERY, 8),
             (RAW_STATUS_PAGE, 16), (RAW_FILE_ENTRY, 176), (RAW_BINDING_ENTRY, 32),
             (RAW_LEASE_ENTRY, 112), (RAW_REPLY_HEAD, 8), (RAW_DEPOSIT, 72),
             (RAW_VM_SELECTOR, 80), (RAW_REVOKE_REPLY, 16)]:
    assert s.size == n, (s.format, s.size, n)


# --- names and UUIDs (§2, Appendix A) -------------------------------------

NAME_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def name_field(name: str) -> bytes:
    raw = name.encode("ascii")
    if not 1 <= len(raw) <= 63 or raw[0:1] == b"." or not set(raw) <= NAME_CHARS:
        raise ValueError(f"invalid name {name!r}")
    return raw.ljust(64, b"\0")


def name_from_field(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("ascii")


def uuid_from_name(name: str) -> bytes:
    data = name.encode() + b"gmemd-vm"
    out = bytearray(16)
    for half, seed in enumerate([0xCBF29CE484222325, 0x84222325CBF29CE4]):
        h = seed
        for b in data:
            h = ((h ^ b) * 0x00000100000001B3) & 0xFFFFFFFFFFFFFFFF
        out[8 * half:8 * half + 8] = h.to_bytes(8, "little")
    out[6] = (out[6] & 0x0F) | 0x80
    out[8] = (out[8] & 0x3F) | 0x80
    return bytes(out)


def uuid_text(u: bytes) -> str:
    h = u.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# --- framing (§4, §5) -----------------------------------------------------

class GmemError(Exception):
    """An error reply: errno and the daemon's text."""

    def __init__(self, request, err, text):
        super().__init__(f"{REQUEST_NAMES.get(request, request)} refused: "
                         f"{errno.errorcode.get(err, err)} ({err}): {text}")
        self.errno = err
        self.text = text


class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.features = 0
        self.lease = 0

    def close(self):
        self.sock.close()

    # One sendmsg per message, fds on it; short writes continue without fds.
    def send(self, code, payload, fds=(), flags=VERSION):
        data = HEADER.pack(code, flags, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        while sent < len(data):
            sent += self.sock.sendmsg([data[sent:]])

    # Never read past the current message: header first, then exactly `size`.
    def _recv_exact(self, n, fds):
        buf = b""
        while len(buf) < n:
            data, anc, msg_flags, _ = self.sock.recvmsg(
                n - len(buf), socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds.extend(struct.unpack(f"{usable // 4}i", cdata[:usable]))
            if msg_flags & socket.MSG_CTRUNC:
                raise RuntimeError("control data truncated")
            if not data:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += data
        return buf

    def recv(self):
        fds = []
        code, flags, size = HEADER.unpack(self._recv_exact(HEADER_SIZE, fds))
        if flags & 0x3 != VERSION or flags & ~0xF or size > MAX_PAYLOAD:
            raise RuntimeError(f"bad reply header: code {code} flags {flags:#x} size {size}")
        payload = self._recv_exact(size, fds) if size else b""
        return code, flags, payload, fds

    def call(self, code, payload, fds=(), reply_fds=0, flags=VERSION):
        """Sends a request, returns the reply body (and fds); raises GmemError."""
        self.send(code, payload, fds, flags)
        rcode, rflags, rpayload, rfds = self.recv()
        if not rflags & FLAG_REPLY or rcode != code:
            raise RuntimeError(f"unexpected reply: code {rcode} flags {rflags:#x}")
        status, text_len = RAW_REPLY_HEAD.unpack_from(rpayload)
        if status < 0:
            for fd in rfds:
                os.close(fd)
            assert text_len <= 256 and len(rpayload) == 8 + text_len, "error reply shape"
            raise GmemError(code, -status, rpayload[8:8 + text_len].decode("utf-8", "replace"))
        assert status == 0 and text_len == 0, "success reply head"
        if len(rfds) != reply_fds:
            raise RuntimeError(f"{len(rfds)} fds with the reply, expected {reply_fds}")
        return rpayload[8:], rfds

    # --- requests (§7) ----------------------------------------------------

    def hello_vm(self, vm_name, uuid, features=0x7):
        body, _ = self.call(HELLO, RAW_HELLO.pack(features, 0, 0, uuid, name_field(vm_name)))
        self.features, self.lease, version, _pad = RAW_HELLO_REPLY.unpack(body)
        assert version == VERSION, version
        return self.features, self.lease

    def hello_control(self, features=0x7):
        body, _ = self.call(HELLO, RAW_HELLO.pack(features, HELLO_CONTROL, 0, bytes(16), bytes(64)))
        self.features, self.lease, version, _pad = RAW_HELLO_REPLY.unpack(body)
        return self.features, self.lease

    def create(self, name, size, kind=0, flags=0):
        body, fds = self.call(CREATE, RAW_CREATE.pack(size, kind, flags, name_field(name)), reply_fds=1)
        return fds[0], decode_file_reply(body)

    def open(self, name):
        body, fds = self.call(OPEN, RAW_NAME.pack(name_field(name)), reply_fds=1)
        return fds[0], decode_file_reply(body)

    def bind(self, slot, gpa, name, offset, size):
        self.call(BIND, RAW_BIND.pack(slot, 0, gpa, offset, size, name_field(name)))

    def unbind(self, slot):
        self.call(UNBIND, RAW_UNBIND.pack(slot, 0))

    def destroy(self, name):
        self.call(DESTROY, RAW_NAME.pack(name_field(name)))

    def deposit(self, name, fd, kind=0):
        body, _ = self.call(DEPOSIT, RAW_DEPOSIT.pack(kind, 0, name_field(name)), (fd,))
        return decode_file_reply(body)

    def scrub(self, name):
        self.call(SCRUB, RAW_NAME.pack(name_field(name)))

    def revoke(self, uuid=bytes(16), vm_name=None):
        sel = RAW_VM_SELECTOR.pack(uuid, name_field(vm_name) if vm_name else bytes(64))
        body, _ = self.call(REVOKE, sel)
        leases, bindings, scrubbed, _pad = RAW_REVOKE_REPLY.unpack(body)
        return {"leases": leases, "bindings": bindings, "scrubbed": scrubbed}

    def status_page(self, section, start):
        body, _ = self.call(STATUS, RAW_STATUS_QUERY.pack(section, start))
        return body

    def status_all(self, section):
        """Walks every page (§9); a page that makes no progress is an error."""
        out, start = [], 0
        while True:
            page = self.status_page(section, start)
            total, count, nxt, entries = decode_status_page(section, page)
            out.extend(entries)
            if nxt >= total:
                return out
            if nxt <= start:
                raise RuntimeError(f"STATUS page at {start} made no progress (total {total})")
            start = nxt


def decode_file_reply(body):
    size, page_size, kind, flags = RAW_FILE_REPLY.unpack(body)
    return {"size": size, "page_size": page_size, "kind": KIND_NAMES[kind],
            "created": bool(flags & FILE_CREATED)}


def decode_status_page(section, body):
    total, count, nxt, _pad = RAW_STATUS_PAGE.unpack_from(body)
    pos, entries = RAW_STATUS_PAGE.size, []
    for _ in range(count):
        if section == SECTION_FILES:
            (size, page_size, kind, nbind, owner_uuid, owner_lease, name,
             owner_name) = RAW_FILE_ENTRY.unpack_from(body, pos)
            pos += RAW_FILE_ENTRY.size
            bindings = []
            for _ in range(nbind):
                slot, _flags, gpa, offset, bsize = RAW_BINDING_ENTRY.unpack_from(body, pos)
                pos += RAW_BINDING_ENTRY.size
                bindings.append({"slot": slot, "gpa": gpa, "offset": offset, "size": bsize})
            owner = None
            if owner_uuid != bytes(16):
                owner = {"uuid": uuid_text(owner_uuid), "name": name_from_field(owner_name),
                         "lease": owner_lease}
            entries.append({"name": name_from_field(name), "size": size, "page_size": page_size,
                            "kind": KIND_NAMES[kind], "owner": owner, "bindings": bindings})
        else:
            lease, pid, uid, nbind, files, _pad, uuid, name = RAW_LEASE_ENTRY.unpack_from(body, pos)
            pos += RAW_LEASE_ENTRY.size
            entries.append({"lease": lease, "pid": pid, "uid": uid, "bindings": nbind,
                            "files": files, "uuid": uuid_text(uuid), "name": name_from_field(name)})
    assert pos == len(body), f"trailing bytes in status page: {len(body) - pos}"
    assert nxt <= total, f"status page cursor {nxt} past the end {total}"
    return total, count, nxt, entries


# --- scenario ---------------------------------------------------------------

def expect_error(what, want, fn, *args):
    try:
        fn(*args)
    except GmemError as e:
        assert e.errno == want, f"{what}: got errno {e.errno}, want {want}: {e.text}"
        print(f"  {what}: -{errno.errorcode[e.errno]} ({-e.errno}) {e.text!r}")
        return e
    raise AssertionError(f"{what}: succeeded, expected errno {want}")


def main(path):
    # Appendix A cross-check against the worked example.
    assert uuid_text(uuid_from_name("vm-a")) == "266f834d-d2d9-896f-8fb1-83fd93cf1f56"

    vm_name, file_name, size = "py-vm", "py-ram0", 2 << 20
    uuid = uuid_from_name(vm_name)
    c = Connection(path)

    print("HELLO before HELLO? (a STATUS first)")
    expect_error("STATUS before HELLO", errno.EPROTO, c.status_page, SECTION_FILES, 0)

    features, lease = c.hello_vm(vm_name, uuid)
    print(f"HELLO as VM {vm_name} ({uuid_text(uuid)}): features {features:#x}, lease {lease}")
    assert lease >= 1 and features == 0x7

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

    leases = c.status_all(SECTION_LEASES)
    print(f"STATUS leases: {leases}")
    me = [l for l in leases if l["lease"] == lease][0]
    assert me["pid"] == os.getpid() and me["bindings"] == 1 and me["files"] == 1

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
    assert not info_c["created"] and os.fstat(fd_c).st_ino == st.st_ino
    os.close(fd_c)
    print("  CREATE OPEN_EXISTING with the same size and kind opens it: ok")
    expect_error("CREATE size 0", errno.EINVAL, c.create, "py-zero", 0)
    expect_error("CREATE kind guest_memfd", errno.EINVAL, c.create, "py-gmem", 4096, KIND_GUEST_MEMFD)
    expect_error("second HELLO", errno.EPROTO, c.hello_vm, vm_name, uuid)
    expect_error("UNBIND unbound slot", errno.ENOENT, c.unbind, 7)

    # Frame-level refusals (§5.3 steps 1-4).
    def raw(code, payload, fds=(), flags=VERSION, reply_fds=0):
        return c.call(code, payload, fds, reply_fds, flags)
    expect_error("unknown request code 77", errno.EOPNOTSUPP, raw, 77, b"")
    expect_error("REPLY flag on a request", errno.EINVAL, raw, STATUS, RAW_STATUS_QUERY.pack(0, 0), (), VERSION | FLAG_REPLY)
    expect_error("STATUS with 7-byte payload", errno.EINVAL, raw, STATUS, b"\0" * 7)
    expect_error("STATUS carrying an fd", errno.EBADF, raw, STATUS, RAW_STATUS_QUERY.pack(0, 0), (fd,))
    expect_error("UNBIND with non-zero pad", errno.EINVAL, raw, UNBIND, RAW_UNBIND.pack(0, 1))
    ok, _ = raw(STATUS, RAW_STATUS_QUERY.pack(SECTION_LEASES, 0), (), VERSION | 0x8)
    print("  NEED_REPLY flag accepted: ok")

    # A second VM may not take the file while we own it, nor while we hold it.
    other = Connection(path)
    other.hello_vm("py-vm2", uuid_from_name("py-vm2"))
    expect_error("OPEN by another VM while bound", errno.EBUSY, other.open, file_name)
    expect_error("HELLO for a VM that has a lease", errno.EBUSY, Connection(path).hello_vm, vm_name, uuid)

    c.unbind(0)
    print("UNBIND slot 0: ok")
    after = [f for f in c.status_all(SECTION_FILES) if f["name"] == file_name][0]
    print(f"STATUS after UNBIND: owner {after['owner']}, bindings {after['bindings']}")
    assert after["owner"] is None and after["bindings"] == []
    # Holders (§8.4): a live process that received the fd for py-vm blocks
    # other VMs, except when that process is the requester itself.
    pid = os.fork()
    if pid == 0:
        try:
            child = Connection(path)
            child.hello_vm("py-vm3", uuid_from_name("py-vm3"))
            expect_error("BIND by another VM (child process) while our pid holds the fd",
                         errno.EBUSY, child.bind, 0, 0, file_name, 0, 4096)
            sys.stdout.flush()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - report and fail the child
            print(f"child: {e}")
            sys.stdout.flush()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child check failed"
    other.bind(0, 0, file_name, 0, 4096)
    print("  BIND by another VM from the holder process itself: allowed")
    other.unbind(0)

    binding_limit(path)

    c.destroy(file_name)
    print(f"DESTROY {file_name} (created by this lease): ok")
    assert os.pread(fd, 13, 4096) == b"hello, guest!"
    print("  our fd still reads the memory after DESTROY: ok")
    os.close(fd)

    # Framing error: a version-2 header closes the connection without a reply.
    other.send(STATUS, RAW_STATUS_QUERY.pack(0, 0), flags=2)
    try:
        other.recv()
        raise AssertionError("reply to a version-2 header")
    except (EOFError, ConnectionResetError) as e:
        print(f"version-2 header: connection closed without reply ({type(e).__name__}): ok")
    other.close()
    c.close()


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
    me = [l for l in vm.status_all(SECTION_LEASES) if l["lease"] == vm.lease][0]
    assert me["bindings"] == 0 and me["files"] == 0, me
    print("  DESTROY of the bound file (operator) dropped its bindings: ok")
    vm.close()


F_GET_SEALS, F_ADD_SEALS = 1034, 1033
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW = 0x1, 0x2, 0x4


def operator_checks(path):
    """Needs the peer uid to be an operator (the default for gmemd's own uid)."""
    ctl = Connection(path)
    features, lease = ctl.hello_control()
    print(f"HELLO control session: features {features:#x}, lease {lease}")
    assert lease == 0

    m = os.memfd_create("py-dep", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(m, 8192)
    info = ctl.deposit("py-dep", m)
    seals = fcntl.fcntl(m, F_GET_SEALS)
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
                 ctl.deposit, "py-gmem", ctl.sock.fileno(), 4)
    deposit_checks(ctl)
    ctl.destroy("py-dep")

    # Paging: 30 files of 4 KiB (23 file entries without bindings fit a page).
    names = [f"py-page-{i:02}" for i in range(30)]
    for n in names:
        fd, _ = ctl.create(n, 4096)
        os.close(fd)
    pages, start = [], 0
    while True:
        total, count, nxt, entries = decode_status_page(SECTION_FILES, ctl.status_page(SECTION_FILES, start))
        pages.append(count)
        if count == 0 or nxt >= total:
            break
        start = nxt
    print(f"STATUS files paging over {total} files: page sizes {pages}")
    assert sum(pages) == total == 30 and pages[0] == 23
    for start in (total, 1000):
        t, count, nxt, _ = decode_status_page(SECTION_FILES, ctl.status_page(SECTION_FILES, start))
        print(f"STATUS start {start}: total {t} count {count} next {nxt}")
        assert (t, count, nxt) == (total, 0, total), "cursor not clamped to total"
    for n in names:
        ctl.destroy(n)

    destroy_bound_of_other_vm(path, ctl)
    ambiguous_revoke(path, ctl)

    # REVOKE a VM that has a bound file: its lease ends, content destroyed.
    vm = Connection(path)
    vm.hello_vm("py-victim", uuid_from_name("py-victim"))
    fd, _ = vm.create("py-victim-ram", 8192)
    os.pwrite(fd, b"secret", 0)
    vm.bind(3, 0, "py-victim-ram", 0, 8192)
    report = ctl.revoke(vm_name="py-victim")
    print(f"REVOKE name py-victim: {report}")
    assert report == {"leases": 1, "bindings": 1, "scrubbed": 1}
    try:
        vm.recv()
        raise AssertionError("revoked connection still open")
    except (EOFError, ConnectionResetError):
        print("  revoked VM's connection closed by gmemd: ok")
    assert os.pread(fd, 6, 0) == bytes(6)
    print("  old fd reads zeros after REVOKE: ok")
    fd2, _ = ctl.open("py-victim-ram")
    assert os.fstat(fd2).st_ino != os.fstat(fd).st_ino
    print("  OPEN after REVOKE returns a fresh inode: ok")
    expect_error("REVOKE unknown VM", errno.ENOENT, ctl.revoke, uuid_from_name("nobody"))
    ctl.scrub("py-victim-ram")
    print("SCRUB py-victim-ram: ok")
    ctl.destroy("py-victim-ram")
    for f in (fd, fd2):
        os.close(f)
    vm.close()
    guest_memfd_checks(path, ctl)
    ctl.close()


def seals_of(fd):
    return fcntl.fcntl(fd, F_GET_SEALS)


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
    # Already sealed SHRINK|GROW (no SEAL): accepted as is, nothing added (§7.6, §13).
    fcntl.fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
    info = ctl.deposit("py-odd", m)
    assert info["size"] == 8192 and seals_of(m) == F_SEAL_SHRINK | F_SEAL_GROW
    print("  memfd sealed SHRINK|GROW already: accepted, seals left as they were: ok")
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


def destroy_bound_of_other_vm(path, ctl):
    """§7.7: an operator destroys any file, dropping the owner's bindings."""
    vm = Connection(path)
    vm.hello_vm("py-owner", uuid_from_name("py-owner"))
    fd, _ = vm.create("py-owned", 3 * 4096)
    os.close(fd)
    vm.bind(1, 0, "py-owned", 0, 4096)
    vm.bind(2, 1 << 20, "py-owned", 4096, 4096)
    ctl.destroy("py-owned")
    me = [l for l in ctl.status_all(SECTION_LEASES) if l["lease"] == vm.lease][0]
    assert me["bindings"] == 0 and me["files"] == 0, me
    expect_error("UNBIND a slot whose file an operator destroyed", errno.ENOENT, vm.unbind, 1)
    print("DESTROY (operator control session) of another VM's bound file: ok, its bindings are gone")
    vm.close()


def ambiguous_revoke(path, ctl):
    """§7.9: a name shared by two leases (different UUIDs) is refused."""
    a, b = Connection(path), Connection(path)
    a.hello_vm("py-twin", uuid_from_name("py-twin"))
    b.hello_vm("py-twin", uuid_from_name("py-twin-b"))
    expect_error("REVOKE by a name two leases share", errno.EINVAL, ctl.revoke, bytes(16), "py-twin")
    report = ctl.revoke(uuid_from_name("py-twin-b"))
    assert report == {"leases": 1, "bindings": 0, "scrubbed": 0}, report
    report = ctl.revoke(vm_name="py-twin")
    assert report["leases"] == 1
    left = [l for l in ctl.status_all(SECTION_LEASES) if l["name"] == "py-twin"]
    assert left == [], left
    print("  REVOKE by UUID, then by the now unique name: ok")
    for conn in (a, b):
        try:
            conn.recv()
            raise AssertionError("revoked connection still open")
        except (EOFError, ConnectionResetError):
            pass
        conn.close()


KVM_CREATE_VM = 0xAE01
KVM_CREATE_GUEST_MEMFD = 0xC040AED4  # _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)


def make_guest_memfd(size):
    """(vm fd, guest_memfd) from a fresh KVM VM, or None without KVM support."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        try:
            gmem = fcntl.ioctl(vm, KVM_CREATE_GUEST_MEMFD, bytearray(struct.pack("<QQ6Q", size, 0, *[0] * 6)))
        except OSError:
            os.close(vm)
            return None
        return vm, gmem
    except OSError:
        return None
    finally:
        os.close(kvm)


def guest_memfd_checks(path, ctl):
    """§6.4, §7.6, §7.9: guest_memfds stay with the lease that deposited them."""
    size = 2 << 20
    made = make_guest_memfd(size)
    if made is None:
        print("(no usable /dev/kvm guest_memfd here; skipping the guest_memfd checks)")
        return
    vm_fd, gmem = made
    vm = Connection(path)
    vm.hello_vm("py-gm", uuid_from_name("py-gm"))
    expect_error("DEPOSIT a guest_memfd as memfd", errno.EINVAL, vm.deposit, "py-gm-ram", gmem)
    info = vm.deposit("py-gm-ram", gmem, KIND_GUEST_MEMFD)
    print(f"DEPOSIT guest_memfd py-gm-ram from a VM lease: {info}")
    assert info == {"size": size, "page_size": 4096, "kind": "guest_memfd", "created": True}
    expect_error("OPEN a guest_memfd", errno.EPERM, ctl.open, "py-gm-ram")
    vm.bind(0, 0, "py-gm-ram", 0, size)
    report = ctl.revoke(uuid_from_name("py-gm"))
    print(f"  REVOKE of its VM: {report}")
    # The guest_memfd went with the lease: neither scrubbed nor counted (§7.9).
    assert report == {"leases": 1, "bindings": 1, "scrubbed": 0}, report
    assert "py-gm-ram" not in [f["name"] for f in ctl.status_all(SECTION_FILES)]
    print("  guest_memfd closed and forgotten with the lease: ok")
    vm.close()
    # Lease end without REVOKE: an unbound guest_memfd is dropped too.
    vm = Connection(path)
    vm.hello_vm("py-gm", uuid_from_name("py-gm"))
    vm.deposit("py-gm-ram2", gmem, KIND_GUEST_MEMFD)
    vm.close()
    for _ in range(100):
        if "py-gm-ram2" not in [f["name"] for f in ctl.status_all(SECTION_FILES)]:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("guest_memfd outlived its lease")
    print("  unbound guest_memfd dropped when its lease closed: ok")
    os.close(gmem)
    os.close(vm_fd)


OTHER_UID = 65534  # nobody


def expect_closed(conn, what):
    try:
        conn.recv()
        raise AssertionError(f"{what}: connection still open")
    except (EOFError, ConnectionResetError):
        pass


def other_uid_checks(path):
    """As root: talk to gmemd as uid 65534 from a child process (§5.3, §6.1, §7)."""
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
    ctl = Connection(path)
    ctl.hello_control()
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
    ctl.destroy("py-root-file")
    ctl.destroy("py-ctl-file")
    if "py-np-old" in [f["name"] for f in ctl.status_all(SECTION_FILES)]:
        ctl.destroy("py-np-old")  # left by the non-operator's ended lease: operators only
    owner.close()
    ctl.close()


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
    expect_error("control DESTROY of an unbound file", errno.EPERM, ctl.destroy, "py-ctl-file")
    expect_error("control DESTROY of an unknown file", errno.ENOENT, ctl.destroy, "py-nothing")
    assert any(f["name"] == "py-ctl-file" for f in ctl.status_all(SECTION_FILES))

    old = Connection(path)
    old.hello_vm("py-np-vm", uuid_from_name("py-np-vm"))
    fd, _ = old.create("py-np-old", 4096)
    os.close(fd)
    old.close()  # its lease ends: py-np-old becomes the operators' file
    vm = Connection(path)
    vm.hello_vm("py-np-vm2", uuid_from_name("py-np-vm2"))
    expect_error("DESTROY a file another lease created", errno.EPERM, vm.destroy, "py-root-file")
    expect_error("DESTROY a control session's file", errno.EPERM, vm.destroy, "py-ctl-file")
    expect_error("DESTROY a file of an ended lease (same uid)", errno.EPERM, vm.destroy, "py-np-old")
    fd, _ = vm.create("py-np-own", 2 * 4096)
    os.close(fd)
    vm.bind(0, 0, "py-np-own", 0, 4096)
    expect_error("DESTROY of the own file while bound", errno.EBUSY, vm.destroy, "py-np-own")
    vm.unbind(0)
    vm.destroy("py-np-own")
    print("  DESTROY of the own, unbound file: ok")
    vm.close()
    ctl.close()


if __name__ == "__main__":
    sock_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "gmemd", "gmemd.sock")
    main(sock_path)
    operator_checks(sock_path)
    other_uid_checks(sock_path)
    print("all checks passed")
