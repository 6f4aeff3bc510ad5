//! Wire format: the message header, request codes and payload layouts.
//!
//! Every number on the wire is little-endian; the packed `Raw*` structs carry
//! that in their field types ([`Le32`], [`Le64`]) so a struct can be copied
//! to and from bytes without a manual byte-order step. Decoding checks syntax
//! only (sizes, flag bits, name charset, checked arithmetic); what a request
//! *means* is checked by the daemon. Nothing here does I/O or touches fds.
//!
//! `protocol/PROTOCOL.md` is the normative description of these layouts.

use std::fmt;

use bitflags::bitflags;
use vm_memory::{ByteValued, Le32, Le64};

/// Size of the fixed message header.
pub const HEADER_SIZE: usize = 12;

/// Largest payload a message may carry, in either direction.
///
/// 4 KiB like vhost-user: every request fits easily, the daemon can reject an
/// oversized header before allocating anything, and STATUS pages its answer
/// instead of growing without bound.
pub const MAX_PAYLOAD: usize = 4096;

/// Most fds one message may carry as SCM_RIGHTS (vhost-user's limit).
pub const MAX_FDS: usize = 8;

/// Bytes of a name field on the wire (NUL-padded; at most 63 bytes used).
pub const NAME_LEN: usize = 64;

/// Most bindings one memory file may have. Keeps every STATUS file entry
/// (176 bytes + 32 per binding) well inside one page.
pub const MAX_BINDINGS_PER_FILE: usize = 64;

/// Longest human-readable message in an error reply.
pub const MAX_ERROR_TEXT: usize = 256;

/// The protocol version carried in bits 0–1 of the header flags.
pub const VERSION: u32 = 1;

/// Errors found while decoding bytes from the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header's version bits are not [`VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u32),
    /// The header sets flag bits that have no meaning.
    #[error("reserved header flag bits set: {0:#x}")]
    ReservedFlags(u32),
    /// The header announces more than [`MAX_PAYLOAD`] bytes.
    #[error("payload of {size} bytes exceeds the {max}-byte maximum")]
    Oversized {
        /// Announced payload size.
        size: u32,
        /// The limit.
        max: usize,
    },
    /// The request code is not one this version knows.
    #[error("unknown request code {0}")]
    UnknownRequest(u32),
    /// The payload length does not match what the request requires.
    #[error("{request} payload must be {expected} bytes, got {actual}")]
    BadLength {
        /// Request whose payload was wrong.
        request: Request,
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A payload flags field sets unknown bits.
    #[error("{field}: unknown flag bits {bits:#x}")]
    UnknownFlags {
        /// Which field.
        field: &'static str,
        /// The offending bits.
        bits: u64,
    },
    /// A reserved/padding field is not zero.
    #[error("{0}: reserved field must be zero")]
    NonZeroPadding(&'static str),
    /// A name field is empty, too long, not NUL-padded or uses characters
    /// outside `[A-Za-z0-9._:-]`.
    #[error("invalid {field}: {reason}")]
    BadName {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An enum field holds a value with no meaning.
    #[error("{field}: unknown value {value}")]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The value.
        value: u32,
    },
    /// A reply is malformed (wrong head, message too long, short body).
    #[error("malformed reply: {0}")]
    BadReply(&'static str),
}

/// Result alias for wire decoding.
pub type WireResult<T> = std::result::Result<T, WireError>;

bitflags! {
    /// Header flag bits (vhost-user layout).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct HeaderFlags: u32 {
        /// Version field, bits 0–1; must equal [`VERSION`].
        const VERSION_MASK = 0b11;
        /// Set on every reply.
        const REPLY = 1 << 2;
        /// Accepted for vhost-user familiarity; every request is answered anyway.
        const NEED_REPLY = 1 << 3;
    }
}

/// Request codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Request {
    /// Handshake: features and the VM identity; opens the lease.
    Hello = 1,
    /// Create a named memory file (or open it with `OPEN_EXISTING`); reply carries its fd.
    Create = 2,
    /// Open an existing named memory file; reply carries its fd.
    Open = 3,
    /// Record a binding of a file range at a guest-physical address.
    Bind = 4,
    /// Remove the binding in a slot.
    Unbind = 5,
    /// Hand a client-created memfd or kernel guest_memfd to gmemd (1 fd).
    Deposit = 6,
    /// Forget a memory file and release gmemd's copy of it.
    Destroy = 7,
    /// One page of the files or leases table.
    Status = 8,
    /// Operator: end a VM's lease and destroy the content it owned.
    Revoke = 9,
    /// Destroy a file's content (punch the whole file) and forget its holders.
    Scrub = 10,
}

impl Request {
    /// Every request code, in numeric order.
    pub const ALL: [Request; 10] = [
        Request::Hello,
        Request::Create,
        Request::Open,
        Request::Bind,
        Request::Unbind,
        Request::Deposit,
        Request::Destroy,
        Request::Status,
        Request::Revoke,
        Request::Scrub,
    ];

    /// Number of fds the request must carry.
    pub fn request_fds(self) -> usize {
        match self {
            Request::Deposit => 1,
            _ => 0,
        }
    }

    /// Number of fds a successful reply carries.
    pub fn reply_fds(self) -> usize {
        match self {
            Request::Create | Request::Open => 1,
            _ => 0,
        }
    }

    /// Payload length of the request.
    pub fn request_len(self) -> usize {
        match self {
            Request::Hello => RawHello::SIZE,
            Request::Create => RawCreate::SIZE,
            Request::Open | Request::Destroy | Request::Scrub => RawName::SIZE,
            Request::Bind => RawBind::SIZE,
            Request::Unbind => RawUnbind::SIZE,
            Request::Deposit => RawDeposit::SIZE,
            Request::Status => RawStatusQuery::SIZE,
            Request::Revoke => RawVmSelector::SIZE,
        }
    }

    /// Spec name of the request.
    pub fn name(self) -> &'static str {
        match self {
            Request::Hello => "HELLO",
            Request::Create => "CREATE",
            Request::Open => "OPEN",
            Request::Bind => "BIND",
            Request::Unbind => "UNBIND",
            Request::Deposit => "DEPOSIT",
            Request::Destroy => "DESTROY",
            Request::Status => "STATUS",
            Request::Revoke => "REVOKE",
            Request::Scrub => "SCRUB",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for Request {
    type Error = WireError;

    fn try_from(code: u32) -> WireResult<Self> {
        Request::ALL
            .into_iter()
            .find(|r| *r as u32 == code)
            .ok_or(WireError::UnknownRequest(code))
    }
}

bitflags! {
    /// Feature bits negotiated by HELLO.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Features: u64 {
        /// DEPOSIT of client-created memfds and guest_memfds.
        const DEPOSIT = 1 << 0;
        /// SCRUB of a file's content.
        const SCRUB = 1 << 1;
        /// REVOKE by an operator.
        const REVOKE = 1 << 2;
    }
}

/// The 12-byte header as it lies on the wire.
#[repr(C, packed)]
#[derive(Copy, Clone, Default, Debug)]
pub struct RawHeader {
    /// Request code.
    pub request: Le32,
    /// [`HeaderFlags`].
    pub flags: Le32,
    /// Payload bytes that follow.
    pub size: Le32,
}
// SAFETY: packed, every field is an integer wrapper: no padding, any bytes are valid.
unsafe impl ByteValued for RawHeader {}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_SIZE);

/// A validated header. The request code stays raw so an unknown code can
/// still be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request code (possibly unknown).
    pub code: u32,
    /// Whether this is a reply.
    pub is_reply: bool,
    /// Payload length.
    pub size: u32,
}

impl Header {
    /// A request header for `request` with `size` payload bytes.
    pub fn request(request: Request, size: usize) -> Self {
        Header {
            code: request as u32,
            is_reply: false,
            size: wire_len(size),
        }
    }

    /// A reply header answering `code`.
    pub fn reply(code: u32, size: usize) -> Self {
        Header {
            code,
            is_reply: true,
            size: wire_len(size),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut flags = HeaderFlags::from_bits_retain(VERSION);
        if self.is_reply {
            flags |= HeaderFlags::REPLY;
        }
        let raw = RawHeader {
            request: self.code.into(),
            flags: flags.bits().into(),
            size: self.size.into(),
        };
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(raw.as_slice());
        out
    }

    /// Decodes and validates a header: version, reserved bits, size limit.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> WireResult<Self> {
        let raw: RawHeader = read_raw(bytes);
        let flags = raw.flags.to_native();
        let version = flags & HeaderFlags::VERSION_MASK.bits();
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let reserved = flags & !HeaderFlags::all().bits();
        if reserved != 0 {
            return Err(WireError::ReservedFlags(reserved));
        }
        let size = raw.size.to_native();
        if size as usize > MAX_PAYLOAD {
            return Err(WireError::Oversized {
                size,
                max: MAX_PAYLOAD,
            });
        }
        Ok(Header {
            code: raw.request.to_native(),
            is_reply: flags & HeaderFlags::REPLY.bits() != 0,
            size,
        })
    }
}

/// Converts a payload length that callers keep below [`MAX_PAYLOAD`].
fn wire_len(size: usize) -> u32 {
    assert!(size <= MAX_PAYLOAD, "payload of {size} bytes built");
    // Cannot truncate: bounded by MAX_PAYLOAD just above.
    #[allow(clippy::cast_possible_truncation)]
    let len = size as u32;
    len
}

/// An all-zero value of a wire struct.
fn zeroed<T: ByteValued>() -> T {
    // SAFETY: `ByteValued` promises that any byte pattern, all zeros
    // included, is a valid value of `T` (no references, no niches).
    unsafe { std::mem::zeroed() }
}

/// Copies a `ByteValued` struct out of a slice of exactly its size.
fn read_raw<T: ByteValued>(bytes: &[u8]) -> T {
    let mut value: T = zeroed();
    value.as_mut_slice().copy_from_slice(bytes);
    value
}

macro_rules! raw_struct {
    ($(#[$doc:meta])* $name:ident, $size:expr, { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C, packed)]
        #[derive(Copy, Clone)]
        pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }
        impl Default for $name {
            fn default() -> Self {
                zeroed()
            }
        }
        // SAFETY: packed, every field is an integer wrapper or a byte array:
        // no padding, and any byte pattern is a valid value.
        unsafe impl ByteValued for $name {}
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
        impl $name {
            /// Size on the wire.
            pub const SIZE: usize = $size;
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

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

/// What backs a memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MemoryKind {
    /// Sealed memfd on 4 KiB pages (default).
    Memfd = 0,
    /// hugetlb memfd on 2 MiB pages.
    Hugetlb2M = 1,
    /// hugetlb memfd on 1 GiB pages.
    Hugetlb1G = 2,
    /// `memfd_secret`: removed from the kernel direct map.
    Secret = 3,
    /// Kernel guest_memfd, DEPOSITed by the VMM whose VM created it.
    GuestMemfd = 4,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 5] = [
        MemoryKind::Memfd,
        MemoryKind::Hugetlb2M,
        MemoryKind::Hugetlb1G,
        MemoryKind::Secret,
        MemoryKind::GuestMemfd,
    ];

    /// Page size: the alignment of bindings and of the file size.
    pub fn page_size(self) -> u64 {
        match self {
            MemoryKind::Hugetlb2M => 2 << 20,
            MemoryKind::Hugetlb1G => 1 << 30,
            _ => 4096,
        }
    }

    /// The name used by the CLI and in STATUS.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Memfd => "memfd",
            MemoryKind::Hugetlb2M => "hugetlb-2m",
            MemoryKind::Hugetlb1G => "hugetlb-1g",
            MemoryKind::Secret => "secret",
            MemoryKind::GuestMemfd => "guest_memfd",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MemoryKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MemoryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown memory kind {s:?} (memfd, hugetlb-2m, hugetlb-1g, secret)")
            })
    }
}

impl TryFrom<u32> for MemoryKind {
    type Error = WireError;

    fn try_from(value: u32) -> WireResult<Self> {
        MemoryKind::ALL
            .into_iter()
            .find(|k| *k as u32 == value)
            .ok_or(WireError::UnknownValue {
                field: "kind",
                value,
            })
    }
}

/// Which table a STATUS request pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StatusSection {
    /// Memory files with owners and bindings.
    Files = 0,
    /// Open leases.
    Leases = 1,
}

impl TryFrom<u32> for StatusSection {
    type Error = WireError;

    fn try_from(value: u32) -> WireResult<Self> {
        match value {
            0 => Ok(StatusSection::Files),
            1 => Ok(StatusSection::Leases),
            _ => Err(WireError::UnknownValue {
                field: "section",
                value,
            }),
        }
    }
}

/// A validated name: 1–63 bytes of `[A-Za-z0-9._:-]`, not starting with `.`.
///
/// The charset keeps names safe as file names in the state directory and
/// unambiguous in logs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: &str) -> WireResult<Self> {
        Self::check(s.as_bytes(), "name")?;
        Ok(Name(s.to_owned()))
    }

    fn check(bytes: &[u8], field: &'static str) -> WireResult<()> {
        let bad = |reason| Err(WireError::BadName { field, reason });
        if bytes.is_empty() {
            return bad("empty");
        }
        if bytes.len() >= NAME_LEN {
            return bad("longer than 63 bytes");
        }
        if bytes[0] == b'.' {
            return bad("starts with '.'");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
        {
            return bad("characters outside [A-Za-z0-9._:-]");
        }
        Ok(())
    }

    /// Decodes a NUL-padded name field.
    pub fn from_field(field: &[u8; NAME_LEN], what: &'static str) -> WireResult<Self> {
        let len = field.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if field[len..].iter().any(|&b| b != 0) {
            return Err(WireError::BadName {
                field: what,
                reason: "not NUL-padded",
            });
        }
        Self::check(&field[..len], what)?;
        // The charset check above admits ASCII only.
        Ok(Name(String::from_utf8_lossy(&field[..len]).into_owned()))
    }

    /// Decodes a name field that may be empty (all zero).
    pub fn from_optional_field(
        field: &[u8; NAME_LEN],
        what: &'static str,
    ) -> WireResult<Option<Self>> {
        if field.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Self::from_field(field, what).map(Some)
        }
    }

    /// Encodes into a NUL-padded field.
    pub fn to_field(&self) -> [u8; NAME_LEN] {
        let mut out = [0u8; NAME_LEN];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = WireError;

    fn from_str(s: &str) -> WireResult<Self> {
        Name::new(s)
    }
}

/// A VM UUID (16 raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the canonical 8-4-4-4-12 hex form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Uuid(out))
    }

    /// A stable UUID derived from a name (FNV-1a based, version-8 layout),
    /// so `--vm NAME` maps to the same VM every time without a registry.
    pub fn from_name(name: &str) -> Self {
        let mut out = [0u8; 16];
        for (half, seed) in [0xcbf2_9ce4_8422_2325u64, 0x8422_2325_cbf2_9ce4]
            .into_iter()
            .enumerate()
        {
            let mut hash = seed;
            for b in name.bytes().chain(*b"gmemd-vm") {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            out[half * 8..half * 8 + 8].copy_from_slice(&hash.to_le_bytes());
        }
        out[6] = (out[6] & 0x0f) | 0x80;
        out[8] = (out[8] & 0x3f) | 0x80;
        Uuid(out)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The identity a lease is opened with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmId {
    /// UUID: what ownership compares.
    pub uuid: Uuid,
    /// Name, for people.
    pub name: Name,
}

impl VmId {
    /// A VM identity with a UUID derived from its name.
    pub fn from_name(name: Name) -> Self {
        VmId {
            uuid: Uuid::from_name(name.as_str()),
            name,
        }
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.uuid)
    }
}

/// HELLO: a VM lease or a control session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Features the client supports.
    pub features: Features,
    /// The VM, or `None` for a control session.
    pub vm: Option<VmId>,
}

/// CREATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// File name.
    pub name: Name,
    /// Size in bytes (a non-zero multiple of the kind's page size).
    pub size: u64,
    /// Backing.
    pub kind: MemoryKind,
    /// Flags.
    pub flags: CreateFlags,
}

/// BIND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    /// Memslot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// File.
    pub name: Name,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// DEPOSIT (the fd travels beside the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositRequest {
    /// Name to file it under.
    pub name: Name,
    /// What the client says the fd is; gmemd checks.
    pub kind: MemoryKind,
}

/// STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusQuery {
    /// Table.
    pub section: StatusSection,
    /// First entry.
    pub start: u32,
}

/// Selects a VM by UUID or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmSelector {
    /// By UUID.
    Uuid(Uuid),
    /// By name.
    Name(Name),
}

impl fmt::Display for VmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmSelector::Uuid(u) => write!(f, "uuid {u}"),
            VmSelector::Name(n) => write!(f, "name {n}"),
        }
    }
}

/// A decoded request payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// HELLO.
    Hello(Hello),
    /// CREATE.
    Create(CreateRequest),
    /// OPEN.
    Open(Name),
    /// BIND.
    Bind(BindRequest),
    /// UNBIND.
    Unbind {
        /// Slot.
        slot: u32,
    },
    /// DEPOSIT.
    Deposit(DepositRequest),
    /// DESTROY.
    Destroy(Name),
    /// STATUS.
    Status(StatusQuery),
    /// REVOKE.
    Revoke(VmSelector),
    /// SCRUB.
    Scrub(Name),
}

impl RequestBody {
    /// The request code.
    pub fn request(&self) -> Request {
        match self {
            RequestBody::Hello(_) => Request::Hello,
            RequestBody::Create(_) => Request::Create,
            RequestBody::Open(_) => Request::Open,
            RequestBody::Bind(_) => Request::Bind,
            RequestBody::Unbind { .. } => Request::Unbind,
            RequestBody::Deposit(_) => Request::Deposit,
            RequestBody::Destroy(_) => Request::Destroy,
            RequestBody::Status(_) => Request::Status,
            RequestBody::Revoke(_) => Request::Revoke,
            RequestBody::Scrub(_) => Request::Scrub,
        }
    }

    /// Decodes the payload of request `code`. Never panics.
    pub fn decode(code: u32, payload: &[u8]) -> WireResult<Self> {
        let request = Request::try_from(code)?;
        let expected = request.request_len();
        if payload.len() != expected {
            return Err(WireError::BadLength {
                request,
                expected,
                actual: payload.len(),
            });
        }
        Ok(match request {
            Request::Hello => {
                let raw: RawHello = read_raw(payload);
                zero_pad(raw.pad, "HELLO pad")?;
                let flags = flags_from::<HelloFlags>(raw.flags.to_native(), "HELLO flags")?;
                // Unknown feature bits are masked, not refused: newer clients
                // offer more than this daemon knows and negotiation drops it.
                let features = Features::from_bits_truncate(raw.features.to_native());
                let vm = if flags.contains(HelloFlags::CONTROL) {
                    if raw.uuid != [0; 16] || raw.name != [0; NAME_LEN] {
                        return Err(WireError::NonZeroPadding("HELLO control identity"));
                    }
                    None
                } else {
                    let uuid = Uuid(raw.uuid);
                    if uuid.is_nil() {
                        return Err(WireError::BadName {
                            field: "vm uuid",
                            reason: "all zero",
                        });
                    }
                    Some(VmId {
                        uuid,
                        name: Name::from_field(&raw.name, "vm name")?,
                    })
                };
                RequestBody::Hello(Hello { features, vm })
            }
            Request::Create => {
                let raw: RawCreate = read_raw(payload);
                RequestBody::Create(CreateRequest {
                    name: Name::from_field(&raw.name, "file name")?,
                    size: raw.size.to_native(),
                    kind: MemoryKind::try_from(raw.kind.to_native())?,
                    flags: flags_from(raw.flags.to_native(), "CREATE flags")?,
                })
            }
            Request::Open | Request::Destroy | Request::Scrub => {
                let raw: RawName = read_raw(payload);
                let name = Name::from_field(&raw.name, "file name")?;
                match request {
                    Request::Open => RequestBody::Open(name),
                    Request::Destroy => RequestBody::Destroy(name),
                    _ => RequestBody::Scrub(name),
                }
            }
            Request::Bind => {
                let raw: RawBind = read_raw(payload);
                zero_pad(raw.flags, "BIND flags")?;
                RequestBody::Bind(BindRequest {
                    slot: raw.slot.to_native(),
                    gpa: raw.gpa.to_native(),
                    name: Name::from_field(&raw.name, "file name")?,
                    offset: raw.offset.to_native(),
                    size: raw.size.to_native(),
                })
            }
            Request::Unbind => {
                let raw: RawUnbind = read_raw(payload);
                zero_pad(raw.pad, "UNBIND pad")?;
                RequestBody::Unbind {
                    slot: raw.slot.to_native(),
                }
            }
            Request::Deposit => {
                let raw: RawDeposit = read_raw(payload);
                zero_pad(raw.flags, "DEPOSIT flags")?;
                RequestBody::Deposit(DepositRequest {
                    name: Name::from_field(&raw.name, "file name")?,
                    kind: MemoryKind::try_from(raw.kind.to_native())?,
                })
            }
            Request::Status => {
                let raw: RawStatusQuery = read_raw(payload);
                RequestBody::Status(StatusQuery {
                    section: StatusSection::try_from(raw.section.to_native())?,
                    start: raw.start.to_native(),
                })
            }
            Request::Revoke => {
                let raw: RawVmSelector = read_raw(payload);
                let uuid = Uuid(raw.uuid);
                RequestBody::Revoke(if uuid.is_nil() {
                    VmSelector::Name(Name::from_field(&raw.name, "vm name")?)
                } else {
                    if raw.name != [0; NAME_LEN] {
                        return Err(WireError::NonZeroPadding("REVOKE name with uuid"));
                    }
                    VmSelector::Uuid(uuid)
                })
            }
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RequestBody::Hello(h) => {
                let (flags, uuid, name) = match &h.vm {
                    Some(vm) => (HelloFlags::empty(), vm.uuid.0, vm.name.to_field()),
                    None => (HelloFlags::CONTROL, [0; 16], [0; NAME_LEN]),
                };
                RawHello {
                    features: h.features.bits().into(),
                    flags: flags.bits().into(),
                    pad: 0.into(),
                    uuid,
                    name,
                }
                .as_slice()
                .to_vec()
            }
            RequestBody::Create(c) => RawCreate {
                size: c.size.into(),
                kind: (c.kind as u32).into(),
                flags: c.flags.bits().into(),
                name: c.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Open(n) | RequestBody::Destroy(n) | RequestBody::Scrub(n) => {
                RawName { name: n.to_field() }.as_slice().to_vec()
            }
            RequestBody::Bind(b) => RawBind {
                slot: b.slot.into(),
                flags: 0.into(),
                gpa: b.gpa.into(),
                offset: b.offset.into(),
                size: b.size.into(),
                name: b.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Unbind { slot } => RawUnbind {
                slot: (*slot).into(),
                pad: 0.into(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Deposit(d) => RawDeposit {
                kind: (d.kind as u32).into(),
                flags: 0.into(),
                name: d.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Status(q) => RawStatusQuery {
                section: (q.section as u32).into(),
                start: q.start.into(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Revoke(sel) => {
                let (uuid, name) = match sel {
                    VmSelector::Uuid(u) => (u.0, [0; NAME_LEN]),
                    VmSelector::Name(n) => ([0; 16], n.to_field()),
                };
                RawVmSelector { uuid, name }.as_slice().to_vec()
            }
        }
    }
}

fn zero_pad(value: Le32, field: &'static str) -> WireResult<()> {
    if value.to_native() != 0 {
        return Err(WireError::NonZeroPadding(field));
    }
    Ok(())
}

fn flags_from<F: bitflags::Flags<Bits = u32>>(bits: u32, field: &'static str) -> WireResult<F> {
    F::from_bits(bits).ok_or(WireError::UnknownFlags {
        field,
        bits: u64::from(bits & !F::all().bits()),
    })
}

/// A file as described by CREATE, OPEN and DEPOSIT replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Size.
    pub size: u64,
    /// Page size.
    pub page_size: u64,
    /// Kind.
    pub kind: MemoryKind,
    /// Whether the request created it.
    pub created: bool,
}

impl FileInfo {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.created {
            FileReplyFlags::CREATED
        } else {
            FileReplyFlags::empty()
        };
        RawFileReply {
            size: self.size.into(),
            page_size: self.page_size.into(),
            kind: (self.kind as u32).into(),
            flags: flags.bits().into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawFileReply = read_exact(body)?;
        let flags: FileReplyFlags = flags_from(raw.flags.to_native(), "file reply flags")?;
        Ok(FileInfo {
            size: raw.size.to_native(),
            page_size: raw.page_size.to_native(),
            kind: MemoryKind::try_from(raw.kind.to_native())?,
            created: flags.contains(FileReplyFlags::CREATED),
        })
    }
}

/// HELLO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReply {
    /// Negotiated features.
    pub features: Features,
    /// Lease id (0 for control sessions).
    pub lease: u64,
    /// Daemon protocol version.
    pub version: u32,
}

impl HelloReply {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        RawHelloReply {
            features: self.features.bits().into(),
            lease: self.lease.into(),
            version: self.version.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawHelloReply = read_exact(body)?;
        Ok(HelloReply {
            features: Features::from_bits_truncate(raw.features.to_native()),
            lease: raw.lease.to_native(),
            version: raw.version.to_native(),
        })
    }
}

/// REVOKE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevokeReport {
    /// Leases ended.
    pub leases: u32,
    /// Bindings dropped.
    pub bindings: u32,
    /// Files whose content was destroyed.
    pub scrubbed: u32,
}

impl RevokeReport {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        RawRevokeReply {
            leases: self.leases.into(),
            bindings: self.bindings.into(),
            scrubbed: self.scrubbed.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawRevokeReply = read_exact(body)?;
        Ok(RevokeReport {
            leases: raw.leases.to_native(),
            bindings: raw.bindings.to_native(),
            scrubbed: raw.scrubbed.to_native(),
        })
    }
}

fn read_exact<T: ByteValued>(body: &[u8]) -> WireResult<T> {
    if body.len() != std::mem::size_of::<T>() {
        return Err(WireError::BadReply("body length"));
    }
    Ok(read_raw(body))
}

/// A decoded reply: status, error text, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 or a negative errno.
    pub status: i32,
    /// Error text (empty on success).
    pub text: String,
    /// Request-specific body (empty on error).
    pub body: Vec<u8>,
}

impl Reply {
    /// A success reply with `body`.
    pub fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 0,
            text: String::new(),
            body,
        }
    }

    /// An error reply; `errno` is positive, the text is cut to [`MAX_ERROR_TEXT`].
    pub fn error(errno: i32, text: &str) -> Self {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Reply {
            status: -errno.abs(),
            text: text[..end].to_owned(),
            body: Vec::new(),
        }
    }

    /// Encodes the reply payload.
    pub fn encode(&self) -> Vec<u8> {
        let text_len = wire_len(self.text.len());
        let head = RawReplyHead {
            // Two's complement on the wire, like every errno-in-u32 protocol.
            #[allow(clippy::cast_sign_loss)]
            status: (self.status as u32).into(),
            text_len: text_len.into(),
        };
        let mut out = Vec::with_capacity(RawReplyHead::SIZE + self.text.len() + self.body.len());
        out.extend_from_slice(head.as_slice());
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes a reply payload. Never panics.
    pub fn decode(payload: &[u8]) -> WireResult<Self> {
        if payload.len() < RawReplyHead::SIZE {
            return Err(WireError::BadReply("shorter than the reply head"));
        }
        let (head, rest) = payload.split_at(RawReplyHead::SIZE);
        let head: RawReplyHead = read_raw(head);
        #[allow(clippy::cast_possible_wrap)]
        let status = head.status.to_native() as i32;
        let text_len = head.text_len.to_native() as usize;
        if status > 0 {
            return Err(WireError::BadReply("positive status"));
        }
        if text_len > MAX_ERROR_TEXT || text_len > rest.len() {
            return Err(WireError::BadReply("error text length"));
        }
        if status == 0 && text_len != 0 {
            return Err(WireError::BadReply("error text on success"));
        }
        let (text, body) = rest.split_at(text_len);
        if status != 0 && !body.is_empty() {
            return Err(WireError::BadReply("body on error"));
        }
        Ok(Reply {
            status,
            text: String::from_utf8_lossy(text).into_owned(),
            body: body.to_vec(),
        })
    }
}

/// A file in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// Name.
    pub name: Name,
    /// Size.
    pub size: u64,
    /// Page size.
    pub page_size: u64,
    /// Kind.
    pub kind: MemoryKind,
    /// Owner, if bound.
    pub owner: Option<OwnerStatus>,
    /// Bindings.
    pub bindings: Vec<BindingStatus>,
}

/// The owner of a file in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerStatus {
    /// Owner VM.
    pub vm: VmId,
    /// Its lease.
    pub lease: u64,
}

/// One binding in a STATUS page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingStatus {
    /// Slot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// File offset.
    pub offset: u64,
    /// Size.
    pub size: u64,
}

/// A lease in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Lease id.
    pub lease: u64,
    /// VM.
    pub vm: VmId,
    /// Client pid.
    pub pid: u32,
    /// Client uid.
    pub uid: u32,
    /// Bindings held.
    pub bindings: u32,
    /// Files created through it.
    pub files: u32,
}

/// One page of a STATUS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage<T> {
    /// Entries in the whole table.
    pub total: u32,
    /// Next index to ask for (`total` when done).
    pub next: u32,
    /// Entries of this page.
    pub entries: Vec<T>,
}

/// Builds a STATUS reply body from entries, stopping before the page would
/// exceed the payload limit. Returns the body and the number of entries used.
pub fn encode_status_page<T>(
    total: u32,
    start: u32,
    entries: &[T],
    encode: impl Fn(&T) -> Vec<u8>,
) -> (Vec<u8>, u32) {
    let budget = MAX_PAYLOAD - RawReplyHead::SIZE - RawStatusPage::SIZE;
    let mut body = Vec::new();
    let mut count = 0u32;
    for entry in entries {
        let bytes = encode(entry);
        if body.len() + bytes.len() > budget {
            break;
        }
        body.extend_from_slice(&bytes);
        count += 1;
    }
    let head = RawStatusPage {
        total: total.into(),
        count: count.into(),
        // A start past the end yields an empty page whose cursor is the end.
        next: start.saturating_add(count).min(total).into(),
        pad: 0.into(),
    };
    let mut out = head.as_slice().to_vec();
    out.extend_from_slice(&body);
    (out, count)
}

impl FileStatus {
    /// Wire size of this entry with its bindings.
    pub fn encoded_len(&self) -> usize {
        RawFileEntry::SIZE + self.bindings.len() * RawBindingEntry::SIZE
    }

    /// Encodes the entry and its bindings.
    pub fn encode(&self) -> Vec<u8> {
        let (owner_uuid, owner_lease, owner_name) = match &self.owner {
            Some(o) => (o.vm.uuid.0, o.lease, o.vm.name.to_field()),
            None => ([0; 16], 0, [0; NAME_LEN]),
        };
        let count = u32::try_from(self.bindings.len()).unwrap_or(u32::MAX);
        let mut out = RawFileEntry {
            size: self.size.into(),
            page_size: self.page_size.into(),
            kind: (self.kind as u32).into(),
            bindings: count.into(),
            owner_uuid,
            owner_lease: owner_lease.into(),
            name: self.name.to_field(),
            owner_name,
        }
        .as_slice()
        .to_vec();
        for b in &self.bindings {
            out.extend_from_slice(
                RawBindingEntry {
                    slot: b.slot.into(),
                    flags: 0.into(),
                    gpa: b.gpa.into(),
                    offset: b.offset.into(),
                    size: b.size.into(),
                }
                .as_slice(),
            );
        }
        out
    }

    /// Decodes a files page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<FileStatus>> {
        let (head, mut rest) = split_page(body)?;
        let mut entries = Vec::new();
        for _ in 0..head.count.to_native() {
            let (raw, tail) = take::<RawFileEntry>(rest)?;
            let owner = if raw.owner_uuid == [0; 16] {
                None
            } else {
                Some(OwnerStatus {
                    vm: VmId {
                        uuid: Uuid(raw.owner_uuid),
                        name: Name::from_field(&raw.owner_name, "owner name")?,
                    },
                    lease: raw.owner_lease.to_native(),
                })
            };
            let mut bindings = Vec::new();
            rest = tail;
            for _ in 0..raw.bindings.to_native() {
                let (b, tail) = take::<RawBindingEntry>(rest)?;
                rest = tail;
                bindings.push(BindingStatus {
                    slot: b.slot.to_native(),
                    gpa: b.gpa.to_native(),
                    offset: b.offset.to_native(),
                    size: b.size.to_native(),
                });
            }
            entries.push(FileStatus {
                name: Name::from_field(&raw.name, "file name")?,
                size: raw.size.to_native(),
                page_size: raw.page_size.to_native(),
                kind: MemoryKind::try_from(raw.kind.to_native())?,
                owner,
                bindings,
            });
        }
        finish_page(head, rest, entries)
    }
}

impl LeaseStatus {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        RawLeaseEntry {
            lease: self.lease.into(),
            pid: self.pid.into(),
            uid: self.uid.into(),
            bindings: self.bindings.into(),
            files: self.files.into(),
            pad: 0.into(),
            uuid: self.vm.uuid.0,
            name: self.vm.name.to_field(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a leases page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<LeaseStatus>> {
        let (head, mut rest) = split_page(body)?;
        let mut entries = Vec::new();
        for _ in 0..head.count.to_native() {
            let (raw, tail) = take::<RawLeaseEntry>(rest)?;
            rest = tail;
            entries.push(LeaseStatus {
                lease: raw.lease.to_native(),
                vm: VmId {
                    uuid: Uuid(raw.uuid),
                    name: Name::from_field(&raw.name, "vm name")?,
                },
                pid: raw.pid.to_native(),
                uid: raw.uid.to_native(),
                bindings: raw.bindings.to_native(),
                files: raw.files.to_native(),
            });
        }
        finish_page(head, rest, entries)
    }
}

fn split_page(body: &[u8]) -> WireResult<(RawStatusPage, &[u8])> {
    take::<RawStatusPage>(body)
}

fn finish_page<T>(head: RawStatusPage, rest: &[u8], entries: Vec<T>) -> WireResult<StatusPage<T>> {
    if !rest.is_empty() {
        return Err(WireError::BadReply("trailing bytes in status page"));
    }
    let total = head.total.to_native();
    let next = head.next.to_native();
    if next > total {
        return Err(WireError::BadReply("status page cursor past the end"));
    }
    Ok(StatusPage {
        total,
        next,
        entries,
    })
}

fn take<T: ByteValued>(bytes: &[u8]) -> WireResult<(T, &[u8])> {
    let size = std::mem::size_of::<T>();
    if bytes.len() < size {
        return Err(WireError::BadReply("status page truncated"));
    }
    let (head, tail) = bytes.split_at(size);
    Ok((read_raw(head), tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn sample_requests() -> Vec<RequestBody> {
        let vm = VmId::from_name(name("vm-a"));
        vec![
            RequestBody::Hello(Hello {
                features: Features::all(),
                vm: Some(vm.clone()),
            }),
            RequestBody::Hello(Hello {
                features: Features::empty(),
                vm: None,
            }),
            RequestBody::Create(CreateRequest {
                name: name("ram0"),
                size: 1 << 30,
                kind: MemoryKind::Hugetlb2M,
                flags: CreateFlags::OPEN_EXISTING,
            }),
            RequestBody::Open(name("ram0")),
            RequestBody::Bind(BindRequest {
                slot: 3,
                gpa: 0x1_0000_0000,
                name: name("ram0"),
                offset: 4096,
                size: 8192,
            }),
            RequestBody::Unbind { slot: 7 },
            RequestBody::Deposit(DepositRequest {
                name: name("gmem"),
                kind: MemoryKind::GuestMemfd,
            }),
            RequestBody::Destroy(name("x")),
            RequestBody::Status(StatusQuery {
                section: StatusSection::Leases,
                start: 5,
            }),
            RequestBody::Revoke(VmSelector::Uuid(vm.uuid)),
            RequestBody::Revoke(VmSelector::Name(name("vm-b"))),
            RequestBody::Scrub(name("ram0")),
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for req in sample_requests() {
            let bytes = req.encode();
            assert_eq!(bytes.len(), req.request().request_len());
            let back = RequestBody::decode(req.request() as u32, &bytes).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn header_round_trips_and_rejects_bad_fields() {
        let h = Header::request(Request::Bind, 96);
        assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
        let r = Header::reply(99, 8);
        assert_eq!(Header::from_bytes(&r.to_bytes()).unwrap(), r);

        let mut bad = h.to_bytes();
        bad[4] = 2; // version 2
        assert_eq!(Header::from_bytes(&bad), Err(WireError::BadVersion(2)));
        let mut bad = h.to_bytes();
        bad[4] |= 0x10;
        assert_eq!(
            Header::from_bytes(&bad),
            Err(WireError::ReservedFlags(0x10))
        );
        let mut bad = h.to_bytes();
        bad[8..12].copy_from_slice(&4097u32.to_le_bytes());
        assert!(matches!(
            Header::from_bytes(&bad),
            Err(WireError::Oversized { size: 4097, .. })
        ));
    }

    #[test]
    fn header_bytes_are_little_endian() {
        let h = Header::request(Request::Status, 8).to_bytes();
        assert_eq!(h, [8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
    }

    #[test]
    fn unknown_code_and_wrong_lengths_are_errors() {
        assert_eq!(
            RequestBody::decode(0, &[]),
            Err(WireError::UnknownRequest(0))
        );
        assert_eq!(
            RequestBody::decode(11, &[]),
            Err(WireError::UnknownRequest(11))
        );
        for req in Request::ALL {
            let len = req.request_len();
            for bad in [0, len - 1, len + 1] {
                let err = RequestBody::decode(req as u32, &vec![0; bad]).unwrap_err();
                assert!(matches!(err, WireError::BadLength { .. }), "{req} {bad}");
            }
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(Name::new("ram-0.vm_1:a").is_ok());
        for bad in ["", ".hidden", "a/b", "sp ace", "é", &"x".repeat(64)] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        let mut field = name("abc").to_field();
        field[10] = b'x'; // garbage after the NUL
        assert!(Name::from_field(&field, "n").is_err());
        let full = [b'a'; NAME_LEN];
        assert!(Name::from_field(&full, "n").is_err());
        assert_eq!(Name::from_optional_field(&[0; NAME_LEN], "n"), Ok(None));
    }

    #[test]
    fn payload_flags_and_padding_are_checked() {
        let mut bind = RequestBody::Bind(BindRequest {
            slot: 0,
            gpa: 0,
            name: name("f"),
            offset: 0,
            size: 4096,
        })
        .encode();
        bind[4] = 1;
        assert!(matches!(
            RequestBody::decode(Request::Bind as u32, &bind),
            Err(WireError::NonZeroPadding(_))
        ));
        let mut create = RequestBody::Create(CreateRequest {
            name: name("f"),
            size: 4096,
            kind: MemoryKind::Memfd,
            flags: CreateFlags::empty(),
        })
        .encode();
        create[12] = 0x80;
        assert!(matches!(
            RequestBody::decode(Request::Create as u32, &create),
            Err(WireError::UnknownFlags { .. })
        ));
        create[12] = 0;
        create[8] = 9; // kind 9
        assert!(matches!(
            RequestBody::decode(Request::Create as u32, &create),
            Err(WireError::UnknownValue { field: "kind", .. })
        ));
    }

    #[test]
    fn hello_rules() {
        // A VM hello needs a non-nil UUID.
        let mut raw = RawHello {
            name: name("vm").to_field(),
            ..Default::default()
        };
        assert!(RequestBody::decode(1, raw.as_slice()).is_err());
        // A control hello must not carry an identity.
        raw.flags = HelloFlags::CONTROL.bits().into();
        assert!(RequestBody::decode(1, raw.as_slice()).is_err());
        raw.name = [0; NAME_LEN];
        assert!(RequestBody::decode(1, raw.as_slice()).is_ok());
        // Unknown feature bits are masked.
        raw.features = u64::MAX.into();
        match RequestBody::decode(1, raw.as_slice()).unwrap() {
            RequestBody::Hello(h) => assert_eq!(h.features, Features::all()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_round_trip_and_reject_malformed() {
        let ok = Reply::ok(vec![1, 2, 3]);
        assert_eq!(Reply::decode(&ok.encode()).unwrap(), ok);
        let err = Reply::error(16, "busy");
        assert_eq!(err.status, -16);
        assert_eq!(Reply::decode(&err.encode()).unwrap(), err);
        let long = Reply::error(22, &"é".repeat(300));
        assert!(long.text.len() <= MAX_ERROR_TEXT);

        assert!(Reply::decode(&[0; 4]).is_err());
        let mut bad = err.encode();
        bad.push(0); // body after an error
        assert!(Reply::decode(&bad).is_err());
        let mut bad = ok.encode();
        bad[4] = 1; // text on success
        assert!(Reply::decode(&bad).is_err());
        let mut bad = ok.encode();
        bad[0] = 1; // positive status
        assert!(Reply::decode(&bad).is_err());
    }

    #[test]
    fn status_pages_round_trip_and_fit() {
        let vm = VmId::from_name(name("vm"));
        let files: Vec<FileStatus> = (0..100)
            .map(|i| FileStatus {
                name: name(&format!("f{i}")),
                size: 1 << 20,
                page_size: 4096,
                kind: MemoryKind::Memfd,
                owner: Some(OwnerStatus {
                    vm: vm.clone(),
                    lease: 4,
                }),
                bindings: vec![BindingStatus {
                    slot: i,
                    gpa: 0,
                    offset: 0,
                    size: 4096,
                }],
            })
            .collect();
        let (body, count) = encode_status_page(100, 0, &files, FileStatus::encode);
        assert!(body.len() + RawReplyHead::SIZE <= MAX_PAYLOAD);
        assert!(count > 0 && count < 100);
        let page = FileStatus::decode_page(&body).unwrap();
        assert_eq!(page.entries.len(), count as usize);
        assert_eq!(page.entries[..], files[..count as usize]);
        assert_eq!(page.next, count);

        let lease = LeaseStatus {
            lease: 9,
            vm,
            pid: 42,
            uid: 0,
            bindings: 1,
            files: 2,
        };
        // A start past the end: an empty page whose cursor is the end.
        let (body, count) = encode_status_page(3, 9, &files[..0], FileStatus::encode);
        assert_eq!(count, 0);
        let page = FileStatus::decode_page(&body).unwrap();
        assert_eq!((page.total, page.next), (3, 3));

        let (body, count) =
            encode_status_page(1, 0, std::slice::from_ref(&lease), LeaseStatus::encode);
        assert_eq!(count, 1);
        assert_eq!(
            LeaseStatus::decode_page(&body).unwrap().entries,
            vec![lease]
        );
        assert!(LeaseStatus::decode_page(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn uuid_text_and_name_derivation() {
        let u = Uuid::from_name("vm-a");
        assert_eq!(u, Uuid::from_name("vm-a"));
        assert_ne!(u, Uuid::from_name("vm-b"));
        assert_eq!(Uuid::parse(&u.to_string()), Some(u));
        assert_eq!(Uuid::parse("nope"), None);
        assert!(!u.is_nil());
    }
}
