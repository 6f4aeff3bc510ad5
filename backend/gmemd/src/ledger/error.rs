//! Refusals of the ledger, each naming what it refused, why, and what to
//! do about it, with the errno a reply carries. Files are named as users
//! see them: `vm/name`, or the bare name of an operators' file.

use gmem_protocol::wire::{LeaseId, Name, Uuid, VmId};

use crate::principal::TieError;
use rustix::io::Errno;

/// Refusals of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No memory file of that name.
    #[error("no memory file {file}")]
    UnknownFile {
        /// The file (`vm/name`, or the name of an operators' file).
        file: String,
    },
    /// A memory file of that name exists.
    #[error("memory file {file} already exists")]
    FileExists {
        /// The file.
        file: String,
    },
    /// No VM with that UUID or name has been seen.
    #[error("no VM {0} is known to gmemd (a VM is known from its first lease for as long as it has a lease or files)")]
    UnknownVmId(String),
    /// The VM belongs to another principal.
    #[error(
        "VM {vm} belongs to another principal: only that principal, or an operator, may open \
         its lease (an operator can free it with `gmemctl forget`, which destroys its memory)"
    )]
    OtherPrincipal {
        /// The VM as the refused client named it (its name or UUID).
        vm: String,
    },
    /// The VM name is taken by another UUID.
    #[error("VM name {name} belongs to VM {uuid}: one name is one VM")]
    NameTaken {
        /// The name.
        name: Name,
        /// The VM that has it.
        uuid: Uuid,
    },
    /// The UUID is known under another name.
    #[error("VM {uuid} is named {name}: a VM keeps its name")]
    Renamed {
        /// The UUID.
        uuid: Uuid,
        /// Its name.
        name: Name,
    },
    /// No tie can be made for the VM's first lease.
    #[error(transparent)]
    Tie(#[from] TieError),
    /// The VM has a lease, so it cannot be forgotten.
    #[error(
        "VM {vm} has lease {lease}: it is running; stop it, or end the lease with `gmemctl \
         revoke {}`, first",
        vm.name
    )]
    VmLeased {
        /// The VM.
        vm: VmId,
        /// Its lease.
        lease: LeaseId,
    },
    /// A guest_memfd never leaves its VM.
    #[error(
        "memory file {file} is a guest_memfd: the kernel binds it to the VM of the VMM that \
         made it, so it cannot move to another namespace"
    )]
    GuestMemfdStays {
        /// The file.
        file: String,
    },
    /// A guest_memfd serves only the lease that deposited it.
    #[error(
        "memory file {file} is a guest_memfd deposited by another lease: the kernel binds it \
         to that VMM's VM only"
    )]
    ForeignGuestMemfd {
        /// The file.
        file: String,
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
    #[error("{field} {value:#x} is not aligned to the {page_size}-byte page size of {file}")]
    Misaligned {
        /// The file.
        file: String,
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
    #[error("range {offset:#x}+{size:#x} ends past the {file_size:#x}-byte file {file}")]
    PastEnd {
        /// The file.
        file: String,
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
    #[error("range {offset:#x}+{size:#x} of {file} overlaps the binding in slot {slot}")]
    FileRangeOverlap {
        /// The file.
        file: String,
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
        "memory file {file} is bound in {bindings} slot(s) by VM {owner}; stop that VM, or end \
         its lease with `gmemctl revoke {}`, first",
        owner.name
    )]
    FileBound {
        /// The file.
        file: String,
        /// Number of bindings.
        bindings: usize,
        /// The VM that binds it.
        owner: VmId,
    },
    /// No lease matches.
    #[error("no open lease for VM {0}")]
    UnknownVm(String),
    /// The file already has the most bindings a file may have.
    #[error("memory file {file} already has {limit} bindings")]
    TooManyBindings {
        /// The file.
        file: String,
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
            | Self::UnknownVmId(_)
            | Self::UnknownLease(_) => Errno::NOENT,
            Self::FileExists { .. }
            | Self::SlotTaken { .. }
            | Self::LeaseExists(_)
            | Self::NameTaken { .. }
            | Self::Renamed { .. } => Errno::EXIST,
            Self::OtherPrincipal { .. } | Self::Tie(_) => Errno::ACCESS,
            Self::ForeignGuestMemfd { .. } | Self::GuestMemfdStays { .. } => Errno::PERM,
            Self::Misaligned { .. } | Self::EmptyBinding => Errno::INVAL,
            Self::TooManyBindings { .. } => Errno::NOSPC,
            Self::VmBusy { .. }
            | Self::VmLeased { .. }
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
