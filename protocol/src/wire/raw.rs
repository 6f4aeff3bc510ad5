//! Payload layouts as they lie on the wire: packed little-endian structs.

use std::fmt;

use bitflags::bitflags;
use vm_memory::{ByteValued, Le32, Le64};

use super::*;

raw_struct!(
    /// HELLO request payload.
    RawHello, 96, {
    /// Features the client supports.
    features: Le64,
    /// [`HelloFlags`].
    flags: Le32,
    /// Zero.
    pad: Le32,
    /// VM UUID (all zero for a control session).
    uuid: [u8; 16],
    /// VM name (empty for a control session).
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// HELLO reply body.
    RawHelloReply, 24, {
    /// Features both sides support.
    features: Le64,
    /// Lease id (0 for a control session).
    lease: Le64,
    /// Daemon protocol version.
    version: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// CREATE request payload.
    RawCreate, 80, {
    /// File size in bytes.
    size: Le64,
    /// [`MemoryKind`].
    kind: Le32,
    /// [`CreateFlags`].
    flags: Le32,
    /// File name.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// Reply body of CREATE, OPEN and DEPOSIT.
    RawFileReply, 24, {
    /// File size.
    size: Le64,
    /// Page size of the file (binding alignment).
    page_size: Le64,
    /// [`MemoryKind`].
    kind: Le32,
    /// [`FileReplyFlags`].
    flags: Le32,
});

raw_struct!(
    /// A bare name: OPEN, DESTROY and SCRUB payload.
    RawName, 64, {
    /// File name.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// BIND request payload.
    RawBind, 96, {
    /// Memslot number, unique per VM.
    slot: Le32,
    /// Zero.
    flags: Le32,
    /// Guest-physical address.
    gpa: Le64,
    /// Offset into the file.
    offset: Le64,
    /// Bytes bound.
    size: Le64,
    /// File name.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// UNBIND request payload.
    RawUnbind, 8, {
    /// Memslot number.
    slot: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// DEPOSIT request payload.
    RawDeposit, 72, {
    /// Expected [`MemoryKind`]: `Memfd` or `GuestMemfd`.
    kind: Le32,
    /// Zero.
    flags: Le32,
    /// Name to file it under.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// A file in a namespace: OPEN, DESTROY and SCRUB payload with feature
    /// `VM_SCOPE`, and each half of TRANSFER. Both `uuid` and `vm_name`
    /// zero: the operators' namespace.
    RawScopedName, 144, {
    /// VM UUID, or zero.
    uuid: [u8; 16],
    /// VM name (used when the UUID is zero), or zero.
    vm_name: [u8; NAME_LEN],
    /// File name.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// TRANSFER request payload.
    RawTransfer, 288, {
    /// The file's namespace: VM UUID, or zero.
    from_uuid: [u8; 16],
    /// Its VM's name (used when the UUID is zero), or zero.
    from_vm_name: [u8; NAME_LEN],
    /// The file's name.
    from_name: [u8; NAME_LEN],
    /// The namespace it goes to, likewise.
    to_uuid: [u8; 16],
    /// Likewise.
    to_vm_name: [u8; NAME_LEN],
    /// Its name there.
    to_name: [u8; NAME_LEN],
});

raw_struct!(
    /// The namespace of a file in a scoped STATUS files entry, after
    /// `RawFileEntry` and before its bindings.
    RawFileSpace, 88, {
    /// The VM whose file it is; zero for an operators' file.
    uuid: [u8; 16],
    /// Its name; zero for an operators' file.
    vm_name: [u8; NAME_LEN],
    /// Seconds since the VM's last lease ended; 0 while it has one (and
    /// for operators' files).
    idle_secs: Le64,
});

raw_struct!(
    /// HANDOFF request payload (the pidfd travels beside it).
    RawHandoff, 8, {
    /// The lease socket's fd number in the named process.
    fd: Le32,
    /// Zero.
    flags: Le32,
});

raw_struct!(
    /// HANDOFF reply body.
    RawHandoffReply, 8, {
    /// The pid gmemd now shows for the lease.
    pid: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// DEVICE request payload.
    RawDevice, 72, {
    /// Virtqueues the device serves, 1 to 8.
    queues: Le32,
    /// Zero.
    flags: Le32,
    /// The disk: a memfd file of the VM's namespace; all zero: no disk
    /// (capacity 0, the device only confirms the memory table).
    disk: [u8; NAME_LEN],
});

raw_struct!(
    /// DEVICE reply body.
    RawDeviceReply, 128, {
    /// The disk's size in bytes (0 without a disk).
    capacity: Le64,
    /// Device id.
    id: Le32,
    /// Bytes of `path` used.
    path_len: Le32,
    /// The device's socket path (UTF-8, zero padded).
    path: [u8; 112],
});

raw_struct!(
    /// STATUS request payload.
    RawStatusQuery, 8, {
    /// [`StatusSection`].
    section: Le32,
    /// Index of the first entry wanted.
    start: Le32,
});

raw_struct!(
    /// Head of a STATUS reply body, followed by `count` entries.
    RawStatusPage, 16, {
    /// Entries in the whole table.
    total: Le32,
    /// Entries in this page.
    count: Le32,
    /// Index to ask for next; equal to `total` when done.
    next: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// One file in a STATUS files page, followed by `bindings` binding entries.
    RawFileEntry, 176, {
    /// File size.
    size: Le64,
    /// Page size.
    page_size: Le64,
    /// [`MemoryKind`].
    kind: Le32,
    /// Binding entries that follow.
    bindings: Le32,
    /// Owner VM UUID (zero: no owner).
    owner_uuid: [u8; 16],
    /// Lease id of the owner (0: no owner).
    owner_lease: Le64,
    /// File name.
    name: [u8; NAME_LEN],
    /// Owner VM name.
    owner_name: [u8; NAME_LEN],
});

raw_struct!(
    /// One binding of a file in a STATUS files page.
    RawBindingEntry, 32, {
    /// Memslot.
    slot: Le32,
    /// Zero.
    flags: Le32,
    /// Guest-physical address.
    gpa: Le64,
    /// File offset.
    offset: Le64,
    /// Size.
    size: Le64,
});

raw_struct!(
    /// One lease in a STATUS leases page.
    RawLeaseEntry, 112, {
    /// Lease id.
    lease: Le64,
    /// Client pid (SO_PEERCRED).
    pid: Le32,
    /// Client uid.
    uid: Le32,
    /// Bindings held.
    bindings: Le32,
    /// Files created through this lease.
    files: Le32,
    /// Zero.
    pad: Le64,
    /// VM UUID.
    uuid: [u8; 16],
    /// VM name.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// One entry of a STATUS memory page (section 4): a file being
    /// populated, or a warm pool.
    RawFillEntry, 120, {
    /// Bytes of one file.
    size: Le64,
    /// Bytes populated so far (of the file a pool is filling).
    populated: Le64,
    /// [`MemoryKind`].
    kind: Le32,
    /// [`FillState`] code.
    state: Le32,
    /// Pool: files ready.
    ready: Le32,
    /// Pool: files it keeps.
    count: Le32,
    /// Pool: files being filled.
    filling: Le32,
    /// A failed prefault: its errno.
    errno: Le32,
    /// Prefault: the namespace of the file (all zero: the operators').
    uuid: [u8; 16],
    /// Prefault: the file's name; zero for a pool.
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// The one entry of a STATUS daemon page (section 3), followed by
    /// `recovered_len` bytes of UTF-8 text, then zeros up to a multiple of
    /// 8 bytes.
    RawDaemonStatus, 40, {
    /// pid of the serving gmemd process.
    pid: Le32,
    /// Restarts the daemon's state has survived.
    restarts: Le32,
    /// When the state was first made (UNIX seconds).
    born: Le64,
    /// When this process started serving (UNIX seconds).
    started: Le64,
    /// Memory files the session may see.
    files: Le32,
    /// Open leases the session may see.
    leases: Le32,
    /// Bytes of recovery text that follow (at most [`MAX_RECOVERED_TEXT`]).
    recovered_len: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// REVOKE payload: a VM chosen by UUID, or by name when the UUID is zero.
    RawVmSelector, 80, {
    /// VM UUID, or zero.
    uuid: [u8; 16],
    /// VM name (used when the UUID is zero).
    name: [u8; NAME_LEN],
});

raw_struct!(
    /// REVOKE reply body.
    RawRevokeReply, 16, {
    /// Leases ended.
    leases: Le32,
    /// Bindings dropped.
    bindings: Le32,
    /// Files whose content was destroyed.
    scrubbed: Le32,
    /// Zero.
    pad: Le32,
});

raw_struct!(
    /// Body of a restart NOTICE, after a reply head with status 0.
    RawRestartNotice, 8, {
    /// Restarts the daemon has survived, this one included.
    restarts: Le32,
    /// 1 if a whole request of this connection was still unread when the
    /// notice was sent (it will be answered), else 0.
    pending: Le32,
});

raw_struct!(
    /// Head of every reply payload.
    RawReplyHead, 8, {
    /// 0, or a negative errno.
    status: Le32,
    /// Bytes of UTF-8 error text that follow (0 on success).
    text_len: Le32,
});

bitflags! {
    /// HELLO flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct HelloFlags: u32 {
        /// A control session (gmemctl): no VM, no lease, no BIND.
        const CONTROL = 1 << 0;
    }
}

bitflags! {
    /// CREATE flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct CreateFlags: u32 {
        /// Open the file instead if it exists with the same size and kind.
        const OPEN_EXISTING = 1 << 0;
        /// Populate the new file in the background (feature `PREFAULT`);
        /// STATUS section 4 shows how far it got.
        const PREFAULT = 1 << 1;
    }
}

bitflags! {
    /// Flags of a file reply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FileReplyFlags: u32 {
        /// The file was created by this request.
        const CREATED = 1 << 0;
    }
}
