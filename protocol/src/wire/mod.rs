//! Wire format: the message header, request codes and payload layouts.
//!
//! Every number on the wire is little-endian; the packed `Raw*` structs carry
//! that in their field types (`Le32`, `Le64` from vm-memory) so a struct can be copied
//! to and from bytes without a manual byte-order step. Decoding checks syntax
//! only (sizes, flag bits, name charset, checked arithmetic); what a request
//! *means* is checked by the daemon. Nothing here does I/O or touches fds.
//!
//! `protocol/PROTOCOL.md` is the normative description of these layouts.

use vm_memory::{ByteValued, Le32};

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

/// Longest recovery text in a STATUS daemon entry ([`DaemonStatus`]), in bytes.
pub const MAX_RECOVERED_TEXT: usize = 1024;

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

/// An enum carried on the wire as a `u32`: its codes, its names (spec or
/// CLI) and its decoding come from one table, so they cannot disagree.
/// `unknown` builds the error for a code with no variant.
macro_rules! wire_enum {
    (
        $(#[$doc:meta])*
        pub enum $name:ident (unknown: $unknown:expr) {
            $($(#[$vdoc:meta])* $variant:ident = $code:literal => $text:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name the spec (or the CLI) uses.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The code on the wire.
            pub const fn code(self) -> u32 {
                self as u32
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl TryFrom<u32> for $name {
            type Error = WireError;

            fn try_from(code: u32) -> WireResult<Self> {
                match code {
                    $($code => Ok($name::$variant),)+
                    other => Err(($unknown)(other)),
                }
            }
        }
    };
}

mod fill;
mod header;
mod identity;
mod kind;
mod raw;
mod reply;
mod request;
mod status;
#[cfg(test)]
mod tests;

pub use fill::{FillState, FillStatus, FillSubject};
pub use header::{Features, Header, HeaderFlags, RawHeader, Request, MARKER_CODES, NOTICE_CODE};
pub use identity::{LeaseId, Name, Uuid, VmId};
pub use kind::{MemoryKind, StatusSection};
pub use raw::*;
pub use reply::{
    DeviceReply, FileInfo, HandoffReply, HelloReply, Reply, RestartNotice, RevokeReport,
    MAX_DEVICE_PATH,
};
pub use request::{
    BindRequest, CreateRequest, DepositRequest, DeviceRequest, FileRef, HandoffRequest, Hello,
    RequestBody, Scope, StatusQuery, TransferRequest, VmSelector, MAX_DEVICE_QUEUES,
};
pub use status::{
    encode_status_page, encode_status_page_from, BindingStatus, DaemonStatus, FileStatus,
    LeaseStatus, OwnerStatus, ScopedFileStatus, StatusPage, BINDING_CONFIRMED,
};
/// Guest-physical addresses are vm-memory's, as in every rust-vmm VMM.
pub use vm_memory::GuestAddress;

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

/// The longest prefix of `text` of at most `max` bytes that ends at a
/// character boundary.
fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn read_exact<T: ByteValued>(body: &[u8]) -> WireResult<T> {
    if body.len() != std::mem::size_of::<T>() {
        return Err(WireError::BadReply("body length"));
    }
    Ok(read_raw(body))
}
