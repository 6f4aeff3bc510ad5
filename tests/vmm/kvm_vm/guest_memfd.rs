//! guest_memfd-backed and private memory: creating a guest_memfd of the VM
//! (`KVM_CREATE_GUEST_MEMFD`), a VM whose RAM is one, and `KVM_SET_MEMORY_ATTRIBUTES`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES,
};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::{MiniVm, VmError, VM_TYPE_DEFAULT};

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18; not in kvm-bindings 0.14): per-VM mask of the
/// flags `KVM_CREATE_GUEST_MEMFD` accepts.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `GUEST_MEMFD_FLAG_MMAP`: the host may mmap() the guest_memfd.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: pages start shared; without it, touching the host mapping
/// raises SIGBUS (Linux 6.18).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const MEMORY_ATTRIBUTE_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64;

impl MiniVm {
    /// Creates a default-type VM whose RAM is a new guest_memfd of `size` bytes at GPA 0.
    /// See [`Self::with_guest_memfd_typed`].
    pub fn with_guest_memfd(size: u64, flags: u64) -> Result<Self, VmError> {
        Self::with_guest_memfd_typed(VM_TYPE_DEFAULT, size, flags)
    }

    /// Creates a VM of `vm_type` whose RAM is a new guest_memfd (`KVM_CREATE_GUEST_MEMFD`
    /// with `flags`) of `size` bytes, bound at GPA 0 as slot 0 with `KVM_MEM_GUEST_MEMFD`.
    ///
    /// The shared view (`userspace_addr`, and [`Self::guest_memory`]) is an mmap of the
    /// guest_memfd itself when `flags` has [`GUEST_MEMFD_FLAG_MMAP`], otherwise anonymous
    /// memory. Host writes to a guest_memfd mapping need [`GUEST_MEMFD_FLAG_INIT_SHARED`]
    /// too; without it the first touch raises SIGBUS.
    pub fn with_guest_memfd_typed(vm_type: u64, size: u64, flags: u64) -> Result<Self, VmError> {
        let mut vm = Self::with_vm_type(vm_type)?;
        if vm.check_cap(KVM_CAP_GUEST_MEMFD) <= 0 {
            return Err(VmError::MissingCap("KVM_CAP_GUEST_MEMFD"));
        }
        let len = usize::try_from(size).map_err(|_| VmError::BadRegion {
            gpa: 0,
            reason: "size does not fit usize",
        })?;
        let gmem = vm.create_guest_memfd(size, flags)?;
        let shared = if flags & GUEST_MEMFD_FLAG_MMAP != 0 {
            let file = File::from(gmem.try_clone().map_err(VmError::Dup)?);
            GuestMemoryMmap::from_ranges_with_files([(
                GuestAddress(0),
                len,
                Some(FileOffset::new(file, 0)),
            )])
        } else {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
        }
        .map_err(VmError::Map)?;
        vm.add_guest_memfd_memory(&shared, gmem.as_fd(), 0)?;
        vm.guest_memfd = Some(gmem);
        Ok(vm)
    }

    /// The guest_memfd flags this VM accepts (`KVM_CAP_GUEST_MEMFD_FLAGS`; 0 if unknown).
    pub fn guest_memfd_flags(&self) -> u64 {
        u64::try_from(self.check_cap(KVM_CAP_GUEST_MEMFD_FLAGS)).unwrap_or(0)
    }

    /// The memory attributes this VM supports (`KVM_CAP_MEMORY_ATTRIBUTES`).
    pub fn memory_attributes(&self) -> u64 {
        u64::try_from(self.check_cap(KVM_CAP_MEMORY_ATTRIBUTES)).unwrap_or(0)
    }

    /// A new fd (dup) for the guest_memfd, e.g. to deposit it with gmemd via `SCM_RIGHTS`.
    pub fn clone_guest_memfd(&self) -> Option<io::Result<OwnedFd>> {
        self.guest_memfd.as_ref().map(OwnedFd::try_clone)
    }

    /// `KVM_CREATE_GUEST_MEMFD` on this VM. The guest_memfd can only be bound to this VM.
    pub fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, VmError> {
        let req = kvm_create_guest_memfd {
            size,
            flags,
            reserved: [0; 6],
        };
        let fd = self
            .vm
            .create_guest_memfd(req)
            .map_err(|source| VmError::CreateGuestMemfd {
                size,
                flags,
                source,
            })?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` for `[gpa, gpa + size)` (e.g. [`MEMORY_ATTRIBUTE_PRIVATE`],
    /// or 0 for shared).
    pub fn set_memory_attributes(
        &self,
        gpa: u64,
        size: u64,
        attributes: u64,
    ) -> Result<(), VmError> {
        let attr = kvm_memory_attributes {
            address: gpa,
            size,
            attributes,
            flags: 0,
        };
        self.vm
            .set_memory_attributes(attr)
            .map_err(|source| VmError::SetMemoryAttributes {
                gpa,
                size,
                attributes,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_code::{self, GuestMode};
    use crate::kvm_vm::test_support::{available, kvm_available};

    #[test]
    fn kvm_guest_memfd_runs_the_guest() {
        if !kvm_available() {
            return;
        }
        let probe = MiniVm::new().unwrap();
        let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        let present =
            probe.check_cap(KVM_CAP_GUEST_MEMFD) > 0 && probe.guest_memfd_flags() & want == want;
        if !available("guest_memfd with MMAP|INIT_SHARED", present) {
            return;
        }
        let mut vm = MiniVm::with_guest_memfd(1 << 20, want).unwrap();
        vm.set_echo(false);
        let mem = vm.guest_memory().unwrap().clone();
        guest_code::load(&mem).unwrap();
        let slot = vm.slots()[0];
        assert_eq!(slot.guest_memfd.map(|b| b.offset), Some(0));
        let out = vm.run(GuestMode::Once, 100).unwrap();
        assert_eq!(out.counter, Some(1));
        assert_eq!(guest_code::read_counter(&mem).unwrap(), 1);
        assert!(vm.clone_guest_memfd().unwrap().is_ok());
    }
}
