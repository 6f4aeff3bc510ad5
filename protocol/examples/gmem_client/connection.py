"""One session with gmemd: framing, fd passing and the requests (§4, §5, §7).

Connection.call sends one request and reads its reply; the request methods
encode their payloads with wire.py and raise GmemError for an error reply.
"""

import errno
import os
import socket
import struct

from .wire import (
    ALL_FEATURES, BIND, CREATE, DEPOSIT, DESTROY, FLAG_REPLY, FORGET, HANDOFF,
    HEADER, HEADER_SIZE, HELLO, HELLO_CONTROL, MARKER_BASE, MAX_FDS, MAX_PAYLOAD,
    NOTICE, OPEN, RAW_BIND, RAW_CREATE, RAW_DEPOSIT, RAW_HANDOFF, RAW_HELLO,
    RAW_HELLO_REPLY, RAW_NAME, RAW_REPLY_HEAD, RAW_RESTART_NOTICE,
    RAW_STATUS_QUERY, RAW_UNBIND, REQUEST_NAMES, RESTART, REVOKE,
    SCRUB, SECTION_DAEMON, STATUS, TRANSFER, UNBIND, VERSION, decode_file_reply,
    decode_handoff_reply, decode_revoke_reply, decode_status_page, name_field,
    scoped_name, vm_selector,
)

# No check should ever wait this long for gmemd.
TIMEOUT_SECONDS = 30


class GmemError(Exception):
    """An error reply: errno and the daemon's text."""

    def __init__(self, request, err, text):
        super().__init__(f"{REQUEST_NAMES.get(request, request)} refused: "
                         f"{errno.errorcode.get(err, err)} ({err}): {text}")
        self.errno = err
        self.text = text


class Restarted(Exception):
    """gmemd restarted and lost the request in flight (§14.4): it may or may
    not have been applied. This client reports it instead of resending."""

    def __init__(self, request):
        super().__init__(f"gmemd restarted while {REQUEST_NAMES.get(request, request)} "
                         "was in flight; it may or may not have been applied")
        self.request = request


class Reply:
    """A decoded reply (§5.3): status 0 with body and fds, or errno and text."""

    def __init__(self, code, payload, fds):
        self.code = code
        self.fds = fds
        status, text_len = RAW_REPLY_HEAD.unpack_from(payload)
        assert status <= 0, f"positive reply status {status}"
        self.errno = -status
        if status < 0:
            assert 1 <= text_len <= 256 and len(payload) == 8 + text_len, \
                f"error reply shape: text_len {text_len}, payload {len(payload)}"
            assert not fds, f"error reply carried {len(fds)} fd(s)"
            self.text = payload[8:].decode("utf-8", "replace")
            self.body = b""
        else:
            assert text_len == 0, f"success reply with text_len {text_len}"
            self.text = ""
            self.body = payload[8:]

    def close_fds(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_SECONDS)
        self.sock.connect(path)
        self.features = 0
        self.lease = 0
        self.restarts_seen = 0

    def close(self):
        self.sock.close()

    # --- framing (§5.1, §12 steps 3 and 6) ---------------------------------

    @staticmethod
    def frame(code, payload, flags=VERSION):
        return HEADER.pack(code, flags, len(payload)) + payload

    def send(self, code, payload, fds=(), flags=VERSION):
        """One sendmsg per message, fds on it; short writes go on without fds."""
        data = self.frame(code, payload, flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        while sent < len(data):
            sent += self.sock.sendmsg([data[sent:]])

    def _recv_exact(self, n, fds):
        """Never reads past the current message; keeps every fd that arrives."""
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
        """(code, flags, payload, fds) of the next message."""
        fds = []
        code, flags, size = HEADER.unpack(self._recv_exact(HEADER_SIZE, fds))
        if flags & 0x3 != VERSION or flags & ~0xF or size > MAX_PAYLOAD:
            raise RuntimeError(f"bad reply header: code {code} flags {flags:#x} size {size}")
        payload = self._recv_exact(size, fds) if size else b""
        return code, flags, payload, fds

    def read_reply(self, code):
        """The next reply, which must answer request `code` (§12 steps 7, 8).

        Restart notices are skipped (§14.2); after one with pending 0, a
        marker tells whether the request was answered or lost (§14.4).
        """
        answer, marker = None, None
        while True:
            rcode, rflags, rpayload, rfds = self.recv()
            if rflags == FLAG_REPLY | VERSION and rcode == NOTICE:
                notice = Reply(rcode, rpayload, rfds)
                assert not notice.errno and len(notice.body) == RAW_RESTART_NOTICE.size
                self.restarts_seen += 1
                restarts, pending = RAW_RESTART_NOTICE.unpack(notice.body)
                assert pending in (0, 1), f"notice pending {pending}"
                if not pending:
                    marker = MARKER_BASE | (self.restarts_seen & 0xFFFF)
                    self.send(marker, b"")
                continue
            if rflags == FLAG_REPLY | VERSION and rcode & MARKER_BASE == MARKER_BASE:
                Reply(rcode, rpayload, rfds)  # EOPNOTSUPP, checked for shape
                if rcode != marker:
                    continue  # an earlier marker's
                if answer is None:
                    raise Restarted(code)
                return answer
            if rflags != FLAG_REPLY | VERSION or rcode != code or answer is not None:
                raise RuntimeError(f"unexpected reply: code {rcode} flags {rflags:#x}, "
                                   f"expected code {code} flags {FLAG_REPLY | VERSION:#x}")
            answer = Reply(rcode, rpayload, rfds)
            if marker is None:
                return answer

    def call(self, code, payload, fds=(), reply_fds=0, flags=VERSION):
        """Sends a request, returns the reply body (and fds); raises GmemError."""
        self.send(code, payload, fds, flags)
        reply = self.read_reply(code)
        if reply.errno:
            reply.close_fds()
            raise GmemError(code, reply.errno, reply.text)
        if len(reply.fds) != reply_fds:
            reply.close_fds()
            raise RuntimeError(f"{len(reply.fds)} fds with the reply, expected {reply_fds}")
        return reply.body, reply.fds

    # --- requests (§7) ------------------------------------------------------

    def _hello(self, payload):
        body, _ = self.call(HELLO, payload)
        self.features, self.lease, version, pad = RAW_HELLO_REPLY.unpack(body)
        assert version == VERSION and pad == 0, (version, pad)
        return self.features, self.lease

    def hello_vm(self, vm_name, uuid, features=ALL_FEATURES):
        return self._hello(RAW_HELLO.pack(features, 0, 0, uuid, name_field(vm_name)))

    def hello_control(self, features=ALL_FEATURES):
        return self._hello(RAW_HELLO.pack(features, HELLO_CONTROL, 0, bytes(16), bytes(64)))

    def create(self, name, size, kind=0, flags=0):
        body, fds = self.call(CREATE, RAW_CREATE.pack(size, kind, flags, name_field(name)), reply_fds=1)
        return fds[0], decode_file_reply(body)

    def open(self, name):
        body, fds = self.call(OPEN, RAW_NAME.pack(name_field(name)), reply_fds=1)
        return fds[0], decode_file_reply(body)

    def open_in(self, name, uuid=bytes(16), vm_name=None):
        """OPEN with a scoped name (§7.3, VM_SCOPE): a VM's file by the VM's
        UUID or name, or with neither an operators' file."""
        body, fds = self.call(OPEN, scoped_name(name, uuid, vm_name), reply_fds=1)
        return fds[0], decode_file_reply(body)

    def bind(self, slot, gpa, name, offset, size):
        self.call(BIND, RAW_BIND.pack(slot, 0, gpa, offset, size, name_field(name)))

    def unbind(self, slot):
        self.call(UNBIND, RAW_UNBIND.pack(slot, 0))

    def destroy(self, name):
        self.call(DESTROY, RAW_NAME.pack(name_field(name)))

    def destroy_in(self, name, uuid=bytes(16), vm_name=None):
        self.call(DESTROY, scoped_name(name, uuid, vm_name))

    def deposit(self, name, fd, kind=0):
        body, _ = self.call(DEPOSIT, RAW_DEPOSIT.pack(kind, 0, name_field(name)), (fd,))
        return decode_file_reply(body)

    def scrub(self, name):
        self.call(SCRUB, RAW_NAME.pack(name_field(name)))

    def scrub_in(self, name, uuid=bytes(16), vm_name=None):
        self.call(SCRUB, scoped_name(name, uuid, vm_name))

    def revoke(self, uuid=bytes(16), vm_name=None):
        body, _ = self.call(REVOKE, vm_selector(uuid, vm_name))
        return decode_revoke_reply(body)

    def transfer(self, src, dst):
        """TRANSFER (§7.12): `src` and `dst` are (name, uuid, vm_name) as for
        scoped_name. Returns the destination's file info; no fd comes."""
        body, _ = self.call(TRANSFER, scoped_name(*src) + scoped_name(*dst))
        return decode_file_reply(body)

    def forget(self, uuid=bytes(16), vm_name=None):
        """FORGET (§7.13): destroys a VM's files and unties it."""
        self.call(FORGET, vm_selector(uuid, vm_name))

    def handoff(self, pidfd, fd, flags=0):
        """Tells gmemd which process holds the lease socket now; returns its pid."""
        body, _ = self.call(HANDOFF, RAW_HANDOFF.pack(fd, flags), (pidfd,))
        return decode_handoff_reply(body)

    def restart(self):
        """RESTART (§7.14): gmemd answers, then restarts in place; this
        connection stays and gets a NOTICE before the next reply."""
        self.call(RESTART, b"")

    def daemon_status(self):
        """The one entry of STATUS section 3 (§9): the daemon itself."""
        page = decode_status_page(SECTION_DAEMON, self.status_page(SECTION_DAEMON, 0))
        total, count, nxt, entries = page
        assert (total, count, nxt) == (1, 1, 1), page
        return entries[0]

    def status_page(self, section, start):
        body, _ = self.call(STATUS, RAW_STATUS_QUERY.pack(section, start))
        return body

    def status_all(self, section):
        """Walks every page (§9); a page that makes no progress is an error."""
        out, start = [], 0
        while True:
            total, _count, nxt, entries = decode_status_page(section, self.status_page(section, start))
            out.extend(entries)
            if nxt >= total:
                return out
            if nxt <= start:
                raise RuntimeError(f"STATUS page at {start} made no progress (total {total})")
            start = nxt
