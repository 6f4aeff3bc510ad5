//! Refusals of the ledger, each naming what it refused, why, and what to
//! do about it, with the errno a reply carries.

use gmem_protocol::wire::{LeaseId, Name, VmId};
use rustix::io::Errno;

/// Refusals of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No memory file of that name.
    #[error("no memory file named {name}")]
    UnknownFile {
        /// File name.
        name: Name,
    },
    /// A memory file of that name exists.
    #[error("memory file {name} already exists")]
    FileExists {
        /// File name.
        name: Name,
    },
    /// The file is bound by another VM.
    #[error(
        "memory file {name} is owned by VM {owner} (lease {lease}); stop that VM, or end its \
         lease with `gmemctl revoke {}` (which destroys what only it owned)",
        owner.name
    )]
    NotOwner {
        /// File name.
        name: Name,
        /// Current owner.
        owner: VmId,
        /// The owner's lease.
        lease: LeaseId,
    },
    /// A guest_memfd serves only the VM that deposited it.
    #[error(
        "memory file {name} is a guest_memfd deposited by VM {depositor}: the kernel binds it \
         to that VM only, so no other VM may bind it"
    )]
    ForeignGuestMemfd {
        /// File name.
        name: Name,
        /// The VM that deposited it.
        depositor: VmId,
    },
    /// A process that received the file for another VM is still alive.
    #[error(
        "memory file {name} is still reachable by pid {pid}, which received it for {holder}; \
         wait for it to exit, or destroy the content with `gmemctl scrub {name}`"
    )]
    HeldElsewhere {
        /// File name.
        name: Name,
        /// The holding process.
        pid: u32,
        /// Who it received the file for.
        holder: String,
    },
    /// The VM already has an open lease.
    #[error(
        "VM {vm} already has lease {lease} (pid {pid}): it is running; stop it first, or end \
         the lease with `gmemctl revoke {}`",
        vm.name
    )]
    VmBusy {
        /// The VM.
        vm: VmId,
        /// Its open lease.
        lease: LeaseId,
        /// The process holding it.
        pid: u32,
    },
    /// A number is not a multiple of the file's page size.
    #[error("{field} {value:#x} is not aligned to the {page_size}-byte page size of {name}")]
    Misaligned {
        /// File name.
        name: Name,
        /// `offset`, `size` or `gpa`.
        field: &'static str,
        /// The value.
        value: u64,
        /// Required alignment.
        page_size: u64,
    },
    /// A binding of zero bytes.
    #[error("a binding must cover at least one page")]
    EmptyBinding,
    /// `offset + size` lies past the end of the file.
    #[error("range {offset:#x}+{size:#x} ends past the {file_size:#x}-byte file {name}")]
    PastEnd {
        /// File name.
        name: Name,
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// File size.
        file_size: u64,
    },
    /// `gpa + size` overflows the guest address space.
    #[error("guest range {gpa:#x}+{size:#x} overflows")]
    GuestOverflow {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The file range overlaps another binding of the same file.
    #[error("range {offset:#x}+{size:#x} of {name} overlaps the binding in slot {slot}")]
    FileRangeOverlap {
        /// File name.
        name: Name,
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// The slot already bound there.
        slot: u32,
    },
    /// The VM already uses the slot.
    #[error("slot {slot} is already bound in this VM")]
    SlotTaken {
        /// Slot.
        slot: u32,
    },
    /// The guest-physical range overlaps another binding of the VM.
    #[error("guest range {gpa:#x}+{size:#x} overlaps slot {slot} of this VM")]
    GuestOverlap {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// The slot already there.
        slot: u32,
    },
    /// The slot is not bound in this VM.
    #[error("slot {slot} is not bound in this VM")]
    UnknownSlot {
        /// Slot.
        slot: u32,
    },
    /// The file still has bindings.
    #[error(
        "memory file {name} is bound in {bindings} slot(s) by VM {owner}; stop that VM, or end \
         its lease with `gmemctl revoke {}`, first",
        owner.name
    )]
    FileBound {
        /// File name.
        name: Name,
        /// Number of bindings.
        bindings: usize,
        /// The VM that binds it.
        owner: VmId,
    },
    /// No lease matches.
    #[error("no open lease for VM {0}")]
    UnknownVm(String),
    /// A name matches several VMs' leases.
    #[error("VM name {name} matches {count} leases; name the VM by UUID")]
    AmbiguousVm {
        /// The name.
        name: Name,
        /// Matching leases.
        count: usize,
    },
    /// The file already has the most bindings a file may have.
    #[error("memory file {name} already has {limit} bindings")]
    TooManyBindings {
        /// File name.
        name: Name,
        /// The limit.
        limit: usize,
    },
    /// The lease is not open.
    #[error("lease {0} is not open")]
    UnknownLease(LeaseId),
    /// The lease id is already in use.
    #[error("lease {0} is already open")]
    LeaseExists(LeaseId),
}

impl LedgerError {
    /// The errno a reply carries for this refusal (see PROTOCOL.md).
    pub fn errno(&self) -> Errno {
        match self {
            Self::UnknownFile { .. }
            | Self::UnknownSlot { .. }
            | Self::UnknownVm(_)
            | Self::UnknownLease(_) => Errno::NOENT,
            Self::FileExists { .. } | Self::SlotTaken { .. } | Self::LeaseExists(_) => Errno::EXIST,
            Self::ForeignGuestMemfd { .. } => Errno::PERM,
            Self::AmbiguousVm { .. } | Self::Misaligned { .. } | Self::EmptyBinding => Errno::INVAL,
            Self::TooManyBindings { .. } => Errno::NOSPC,
            Self::NotOwner { .. }
            | Self::HeldElsewhere { .. }
            | Self::VmBusy { .. }
            | Self::FileBound { .. }
            | Self::FileRangeOverlap { .. } => Errno::BUSY,
            Self::PastEnd { .. } => Errno::RANGE,
            Self::GuestOverflow { .. } => Errno::OVERFLOW,
            Self::GuestOverlap { .. } => Errno::ADDRINUSE,
        }
    }
}

/// Result alias of the ledger.
pub type LedgerResult<T> = Result<T, LedgerError>;
