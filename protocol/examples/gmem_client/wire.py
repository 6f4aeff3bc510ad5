"""Wire format (PROTOCOL.md §2, §4, §6.3, §7, §9, Appendix A).

Constants, packed little-endian struct layouts, names and UUIDs, and the
decoders of reply bodies. No I/O here.
"""

import struct

# --- framing (§4) -----------------------------------------------------------

HEADER = struct.Struct("<III")  # request, flags, size
HEADER_SIZE = 12
MAX_PAYLOAD = 4096
MAX_FDS = 8
VERSION = 1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
NOTICE = 0  # header code of a restart NOTICE (§14.2), REPLY flag set
MARKER_BASE = 0xFFFF0000  # marker codes: never requests (§14.4)

# --- requests (§7) ----------------------------------------------------------

(HELLO, CREATE, OPEN, BIND, UNBIND, DEPOSIT, DESTROY, STATUS, REVOKE, SCRUB,
 HANDOFF, TRANSFER, FORGET, RESTART) = range(1, 15)
REQUEST_NAMES = {
    1: "HELLO", 2: "CREATE", 3: "OPEN", 4: "BIND", 5: "UNBIND", 6: "DEPOSIT",
    7: "DESTROY", 8: "STATUS", 9: "REVOKE", 10: "SCRUB", 11: "HANDOFF",
    12: "TRANSFER", 13: "FORGET", 14: "RESTART",
}

# --- features (§6.3) and flags ----------------------------------------------

FEATURE_DEPOSIT, FEATURE_SCRUB, FEATURE_REVOKE, FEATURE_HANDOFF = 0x1, 0x2, 0x4, 0x8
FEATURE_VM_SCOPE, FEATURE_RESTART = 0x10, 0x20
ALL_FEATURES = (FEATURE_DEPOSIT | FEATURE_SCRUB | FEATURE_REVOKE | FEATURE_HANDOFF
                | FEATURE_VM_SCOPE | FEATURE_RESTART)
HELLO_CONTROL = 0x1
CREATE_OPEN_EXISTING = 0x1
FILE_CREATED = 0x1

# --- memory kinds (§7.0), limits, status sections (§9) -----------------------

KIND_NAMES = {0: "memfd", 1: "hugetlb-2m", 2: "hugetlb-1g", 3: "secret", 4: "guest_memfd"}
KIND_MEMFD, KIND_HUGETLB_2M, KIND_SECRET, KIND_GUEST_MEMFD = 0, 1, 3, 4
MAX_BINDINGS_PER_FILE = 64
MAX_IN_FLIGHT_AT_REVOKE = 1024
SECTION_FILES, SECTION_LEASES, SECTION_SCOPED_FILES, SECTION_DAEMON = 0, 1, 2, 3
MAX_RECOVERED_TEXT = 1024  # bytes of text in the daemon entry (§9)
FILES_PER_PAGE = 23  # files entries without bindings in one page (§9)
SCOPED_FILES_PER_PAGE = 15  # scoped-files entries without bindings (§9)

# --- payload / body layouts (packed, little-endian) ---------------------------

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
RAW_HANDOFF = struct.Struct("<II")               # 8
RAW_HANDOFF_REPLY = struct.Struct("<II")         # 8
RAW_SCOPED_NAME = struct.Struct("<16s64s64s")    # 144
RAW_TRANSFER = struct.Struct("<16s64s64s16s64s64s")  # 288
RAW_FILE_SPACE = struct.Struct("<16s64sQ")       # 88
RAW_RESTART_NOTICE = struct.Struct("<II")      # 8: restarts, pending
RAW_DAEMON_STATUS = struct.Struct("<IIQQIIII")   # 40

for _s, _n in [(RAW_HELLO, 96), (RAW_HELLO_REPLY, 24), (RAW_CREATE, 80), (RAW_FILE_REPLY, 24),
               (RAW_NAME, 64), (RAW_BIND, 96), (RAW_UNBIND, 8), (RAW_STATUS_QUERY, 8),
               (RAW_STATUS_PAGE, 16), (RAW_FILE_ENTRY, 176), (RAW_BINDING_ENTRY, 32),
               (RAW_LEASE_ENTRY, 112), (RAW_REPLY_HEAD, 8), (RAW_DEPOSIT, 72),
               (RAW_VM_SELECTOR, 80), (RAW_REVOKE_REPLY, 16), (RAW_HANDOFF, 8),
               (RAW_HANDOFF_REPLY, 8), (RAW_SCOPED_NAME, 144), (RAW_TRANSFER, 288),
               (RAW_FILE_SPACE, 88), (RAW_RESTART_NOTICE, 8), (RAW_DAEMON_STATUS, 40)]:
    assert _s.size == _n, (_s.format, _s.size, _n)

# Largest reply (§4.3): header + a full payload.
MAX_REPLY = HEADER_SIZE + MAX_PAYLOAD

# --- names and UUIDs (§2, Appendix A) -----------------------------------------

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


# Appendix A cross-check against the worked example.
assert uuid_text(uuid_from_name("vm-a")) == "266f834d-d2d9-896f-8fb1-83fd93cf1f56"

# --- namespaces (§7.3, §7.12) ----------------------------------------------------


def scoped_name(name, uuid=bytes(16), vm_name=None):
    """RawScopedName: `name` in VM `uuid`'s namespace, else in the namespace
    of the VM named `vm_name`, else (neither given) in the operators'."""
    return RAW_SCOPED_NAME.pack(uuid, name_field(vm_name) if vm_name else bytes(64),
                                name_field(name))


def vm_selector(uuid=bytes(16), vm_name=None):
    """RawVmSelector (§7.9): a VM by UUID, or by name when the UUID is zero."""
    return RAW_VM_SELECTOR.pack(uuid, name_field(vm_name) if vm_name else bytes(64))


# §11's worked example of a scoped OPEN payload (vm-a's ram0, by VM name).
assert scoped_name("ram0", vm_name="vm-a") == (
    bytes(16) + b"vm-a".ljust(64, b"\0") + b"ram0".ljust(64, b"\0"))

# --- reply bodies (§7, §9) -------------------------------------------------------


def decode_file_reply(body):
    size, page_size, kind, flags = RAW_FILE_REPLY.unpack(body)
    return {"size": size, "page_size": page_size, "kind": KIND_NAMES[kind],
            "created": bool(flags & FILE_CREATED)}


def decode_revoke_reply(body):
    leases, bindings, scrubbed, pad = RAW_REVOKE_REPLY.unpack(body)
    assert pad == 0, f"REVOKE reply pad {pad}"
    return {"leases": leases, "bindings": bindings, "scrubbed": scrubbed}


def decode_handoff_reply(body):
    pid, pad = RAW_HANDOFF_REPLY.unpack(body)
    assert pad == 0, f"HANDOFF reply pad {pad}"
    return pid


def _decode_file_entry(body, pos, scoped=False):
    """A files entry (§9): RawFileEntry, in section 2 then RawFileSpace,
    then its bindings."""
    (size, page_size, kind, nbind, owner_uuid, owner_lease, name,
     owner_name) = RAW_FILE_ENTRY.unpack_from(body, pos)
    pos += RAW_FILE_ENTRY.size
    entry = {"name": name_from_field(name), "size": size, "page_size": page_size,
             "kind": KIND_NAMES[kind]}
    if scoped:
        uuid, vm_name, idle_secs = RAW_FILE_SPACE.unpack_from(body, pos)
        pos += RAW_FILE_SPACE.size
        if uuid == bytes(16):
            assert vm_name == bytes(64) and idle_secs == 0, \
                f"operators' file {entry['name']}: vm_name {vm_name!r}, idle_secs {idle_secs}"
            entry["vm"] = None
        else:
            entry["vm"] = {"uuid": uuid_text(uuid), "name": name_from_field(vm_name)}
        entry["idle_secs"] = idle_secs
    bindings = []
    for _ in range(nbind):
        slot, _flags, gpa, offset, bsize = RAW_BINDING_ENTRY.unpack_from(body, pos)
        pos += RAW_BINDING_ENTRY.size
        bindings.append({"slot": slot, "gpa": gpa, "offset": offset, "size": bsize})
    owner = None
    if owner_uuid != bytes(16):
        owner = {"uuid": uuid_text(owner_uuid), "name": name_from_field(owner_name),
                 "lease": owner_lease}
    entry.update(owner=owner, bindings=bindings)
    return entry, pos


def _decode_scoped_file_entry(body, pos):
    return _decode_file_entry(body, pos, scoped=True)


def _decode_lease_entry(body, pos):
    lease, pid, uid, nbind, files, _pad, uuid, name = RAW_LEASE_ENTRY.unpack_from(body, pos)
    entry = {"lease": lease, "pid": pid, "uid": uid, "bindings": nbind,
             "files": files, "uuid": uuid_text(uuid), "name": name_from_field(name)}
    return entry, pos + RAW_LEASE_ENTRY.size


def _decode_daemon_entry(body, pos):
    """The daemon entry (§9, section 3): RawDaemonStatus, its text, zeros
    up to a multiple of 8 bytes."""
    (pid, restarts, born, started, files, leases, text_len,
     _pad) = RAW_DAEMON_STATUS.unpack_from(body, pos)
    pos += RAW_DAEMON_STATUS.size
    assert text_len <= MAX_RECOVERED_TEXT, f"recovery text of {text_len} bytes"
    padded = (text_len + 7) // 8 * 8
    assert pos + padded <= len(body), "daemon entry truncated"
    recovered = body[pos:pos + text_len].decode("utf-8")
    assert body[pos + text_len:pos + padded] == bytes(padded - text_len), "padding not zero"
    entry = {"pid": pid, "restarts": restarts, "born": born, "started": started,
             "files": files, "leases": leases, "recovered": recovered}
    return entry, pos + padded


def decode_status_page(section, body):
    """(total, count, next, entries) of one STATUS page (§9)."""
    total, count, nxt, _pad = RAW_STATUS_PAGE.unpack_from(body)
    pos, entries = RAW_STATUS_PAGE.size, []
    decode = {SECTION_FILES: _decode_file_entry, SECTION_LEASES: _decode_lease_entry,
              SECTION_SCOPED_FILES: _decode_scoped_file_entry,
              SECTION_DAEMON: _decode_daemon_entry}[section]
    for _ in range(count):
        entry, pos = decode(body, pos)
        entries.append(entry)
    assert pos == len(body), f"trailing bytes in status page: {len(body) - pos}"
    assert nxt <= total, f"status page cursor {nxt} past the end {total}"
    return total, count, nxt, entries
