//! The message header, request codes and feature bits.

use std::fmt;

use bitflags::bitflags;
use vm_memory::{ByteValued, Le32};

use super::*;

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

wire_enum! {
    /// Request codes.
    pub enum Request (unknown: WireError::UnknownRequest) {
        /// Handshake: features and the VM identity; opens the lease.
        Hello = 1 => "HELLO",
        /// Create a named memory file (or open it with `OPEN_EXISTING`); reply carries its fd.
        Create = 2 => "CREATE",
        /// Open an existing named memory file; reply carries its fd.
        Open = 3 => "OPEN",
        /// Record a binding of a file range at a guest-physical address.
        Bind = 4 => "BIND",
        /// Remove the binding in a slot.
        Unbind = 5 => "UNBIND",
        /// Hand a client-created memfd or kernel guest_memfd to gmemd (1 fd).
        Deposit = 6 => "DEPOSIT",
        /// Forget a memory file and release gmemd's copy of it.
        Destroy = 7 => "DESTROY",
        /// One page of the files or leases table.
        Status = 8 => "STATUS",
        /// Operator: end a VM's lease and destroy the content it owned.
        Revoke = 9 => "REVOKE",
        /// Destroy a file's content (punch the whole file) and forget its holders.
        Scrub = 10 => "SCRUB",
        /// Tell gmemd which process holds the lease socket now (1 fd: its pidfd).
        Handoff = 11 => "HANDOFF",
        /// Operator: move a file to another namespace, as a fresh inode.
        Transfer = 12 => "TRANSFER",
        /// Operator: untie a VM from its principal.
        Forget = 13 => "FORGET",
        /// Operator: restart gmemd in place (exec, everything handed over).
        Restart = 14 => "RESTART",
        /// Serve a vhost-user-blk device for the lease's VM; reply: its socket.
        Device = 15 => "DEVICE",
    }
}

impl Request {
    /// Number of fds the request must carry.
    pub fn request_fds(self) -> usize {
        match self {
            Request::Deposit | Request::Handoff => 1,
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
            Request::Revoke | Request::Forget => RawVmSelector::SIZE,
            Request::Handoff => RawHandoff::SIZE,
            Request::Transfer => RawTransfer::SIZE,
            Request::Restart => 0,
            Request::Device => RawDevice::SIZE,
        }
    }

    /// Whether the request also takes a [`RawScopedName`] payload (feature
    /// `VM_SCOPE`) instead of its plain `RawName`.
    pub fn has_scoped_form(self) -> bool {
        matches!(self, Request::Open | Request::Destroy | Request::Scrub)
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
        /// HANDOFF: the process holding a lease socket is shown in STATUS.
        const HANDOFF = 1 << 3;
        /// Files addressed in a namespace (OPEN, DESTROY, SCRUB), TRANSFER,
        /// FORGET, and STATUS files with their namespace.
        const VM_SCOPE = 1 << 4;
        /// RESTART by an operator: gmemd restarts in place, keeping every
        /// connection, lease and file.
        const RESTART = 1 << 5;
        /// DEVICE: gmemd serves a vhost-user-blk device per VM disk and
        /// confirms bindings from the memory table QEMU sends it.
        const DEVICE = 1 << 6;
        /// CREATE with `PREFAULT`: gmemd populates the file in the
        /// background; STATUS section 4 shows the progress and the warm
        /// pools.
        const PREFAULT = 1 << 7;
    }
}

/// Header code of a NOTICE: a message the daemon sends unasked, with the
/// `REPLY` flag set (PROTOCOL.md §14.2). No request has this code.
pub const NOTICE_CODE: u32 = 0;

/// The codes `MARKER_CODES` are never requests: the daemon refuses them
/// `EOPNOTSUPP` like any unknown code and changes nothing, so a client may
/// send one to learn, from its reply, that everything it sent before has
/// been read (PROTOCOL.md §14.4).
pub const MARKER_CODES: std::ops::RangeInclusive<u32> = 0xffff_0000..=0xffff_ffff;

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
            code: request.code(),
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

    /// A NOTICE header ([`NOTICE_CODE`], `REPLY` set) with `size` payload bytes.
    pub fn notice(size: usize) -> Self {
        Header::reply(NOTICE_CODE, size)
    }

    /// Whether this is a NOTICE rather than the reply to a request.
    pub fn is_notice(&self) -> bool {
        self.is_reply && self.code == NOTICE_CODE
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
