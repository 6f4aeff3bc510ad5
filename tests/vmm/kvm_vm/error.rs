//! [`VmError`], everything that can go wrong in a [`MiniVm`], and the names of the errnos
//! KVM answers with.
//!
//! [`MiniVm`]: super::MiniVm

use std::io;

use vm_memory::mmap::FromRangesError;
use vm_memory::GuestMemoryError;

/// What can go wrong in a [`MiniVm`].
///
/// [`MiniVm`]: super::MiniVm
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` did not open.
    #[error("open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM type {vm_type}: {source}")]
    CreateVm {
        /// The VM type asked for.
        vm_type: u64,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// A vCPU ioctl failed.
    #[error("{what}: {source}")]
    Vcpu {
        /// The ioctl.
        what: &'static str,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// KVM lacks a capability we need.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// A guest memory region does not fit the memslot ABI.
    #[error("guest memory region at {gpa:#x}: {reason}")]
    BadRegion {
        /// Start of the region.
        gpa: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// `KVM_SET_USER_MEMORY_REGION(2)` failed.
    #[error("KVM_SET_USER_MEMORY_REGION2 slot {slot} gpa {gpa:#x} size {size:#x} flags {flags:#x}: {source}")]
    SetMemoryRegion {
        /// Memslot.
        slot: u32,
        /// Guest-physical start.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// `KVM_MEM_*` flags.
        flags: u32,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// `KVM_CREATE_GUEST_MEMFD` failed.
    #[error("KVM_CREATE_GUEST_MEMFD size {size:#x} flags {flags:#x}: {source}")]
    CreateGuestMemfd {
        /// Requested size.
        size: u64,
        /// Requested flags.
        flags: u64,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MEMORY_ATTRIBUTES` failed.
    #[error("KVM_SET_MEMORY_ATTRIBUTES gpa {gpa:#x} size {size:#x} attributes {attributes:#x}: {source}")]
    SetMemoryAttributes {
        /// Guest-physical start.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// Requested attributes.
        attributes: u64,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// Mapping guest memory into the VMM failed.
    #[error("map guest memory: {0}")]
    Map(#[source] FromRangesError),
    /// Duplicating the guest_memfd failed.
    #[error("dup guest_memfd: {0}")]
    Dup(#[source] io::Error),
    /// Guest memory access by the VMM failed.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
    /// `KVM_RUN` failed.
    #[error("KVM_RUN: {0}")]
    Run(#[source] kvm_ioctls::Error),
    /// `KVM_RUN` reported `KVM_EXIT_MEMORY_FAULT` (e.g. shared/private mismatch).
    #[error("KVM_RUN: memory fault at gpa {gpa:#x} size {size:#x} flags {flags:#x}")]
    MemoryFault {
        /// Faulting guest-physical address.
        gpa: u64,
        /// Size of the access.
        size: u64,
        /// `KVM_MEMORY_EXIT_FLAG_*`.
        flags: u64,
    },
    /// The vCPU exited for a reason the guest never causes.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// The guest wrote to a port it does not use.
    #[error("unexpected out to port {port:#x}: {data:02x?}")]
    UnexpectedIo {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
}

impl VmError {
    /// The errno behind the error, if the kernel refused something.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::OpenKvm(e)
            | Self::CreateVm { source: e, .. }
            | Self::Vcpu { source: e, .. }
            | Self::SetMemoryRegion { source: e, .. }
            | Self::CreateGuestMemfd { source: e, .. }
            | Self::SetMemoryAttributes { source: e, .. }
            | Self::Run(e) => Some(e.errno()),
            Self::Dup(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// Symbolic name of the errnos KVM returns here (`E?` for others).
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::E2BIG => "E2BIG",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EHWPOISON => "EHWPOISON",
        _ => "E?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(9999), "E?");
    }
}
