//! A minimal KVM VM: one vCPU in real mode running [`crate::guest_code`].
//!
//! Guest RAM comes from the caller as a vm-memory [`GuestMemoryMmap`] (normally file-backed
//! regions: a memfd received from gmemd, mapped with [`vm_memory::FileOffset`]); every region
//! becomes one memslot, registered with `KVM_SET_USER_MEMORY_REGION2`. Alternatively
//! [`MiniVm::with_guest_memfd`] backs the guest with a kernel guest_memfd of the VM itself.
//!
//! A [`MiniVm`] keeps a clone of every [`GuestMemoryMmap`] it registered (the clone shares the
//! mappings), so the host addresses in its memslots stay mapped as long as the VM exists.
//!
//! This module creates the VM and its vCPU and answers capability queries; the rest of
//! [`MiniVm`] lives in its submodules:
//! - [`error`]: [`VmError`] and errno names.
//! - [`memslots`]: registering guest memory as memslots.
//! - [`guest_memfd`]: guest_memfd-backed RAM and private-memory attributes.
//! - [`run`]: booting the guest and handling its vCPU exits.

mod error;
mod guest_memfd;
mod memslots;
mod run;

use std::os::fd::OwnedFd;
use std::os::raw::c_ulong;

use kvm_bindings::{KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

pub use error::{errno_name, VmError};
pub use guest_memfd::{
    GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, MEMORY_ATTRIBUTE_PRIVATE,
};
use memslots::MemSlot;

/// `KVM_X86_DEFAULT_VM`.
pub const VM_TYPE_DEFAULT: u64 = kvm_bindings::KVM_X86_DEFAULT_VM as u64;
/// `KVM_X86_SW_PROTECTED_VM`: software-only private memory, for testing.
pub const VM_TYPE_SW_PROTECTED: u64 = kvm_bindings::KVM_X86_SW_PROTECTED_VM as u64;

/// A VM with one vCPU, started in real mode at [`CODE_GPA`] + [`ONCE_ENTRY`].
///
/// [`CODE_GPA`]: crate::guest_code::CODE_GPA
/// [`ONCE_ENTRY`]: crate::guest_code::ONCE_ENTRY
// Field order is drop order: the vCPU and the VM (and so its memslots) go before the mappings
// their memslots point into.
#[derive(Debug)]
pub struct MiniVm {
    vcpu: VcpuFd,
    vm: VmFd,
    vm_type: u64,
    user_memory2: bool,
    slots: Vec<MemSlot>,
    memory: Vec<GuestMemoryMmap>,
    guest_memfd: Option<OwnedFd>,
    echo: bool,
}

impl MiniVm {
    /// Creates a VM of the default type with one vCPU and no memory.
    pub fn new() -> Result<Self, VmError> {
        Self::with_vm_type(VM_TYPE_DEFAULT)
    }

    /// Creates a VM of `vm_type` (`KVM_CREATE_VM` argument) with one vCPU and no memory.
    pub fn with_vm_type(vm_type: u64) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = kvm
            .create_vm_with_type(vm_type)
            .map_err(|source| VmError::CreateVm { vm_type, source })?;
        let vcpu = vm.create_vcpu(0).map_err(|source| VmError::Vcpu {
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        let user_memory2 = vm.check_extension_raw(c_ulong::from(KVM_CAP_USER_MEMORY2)) > 0;
        log::debug!("created VM type {vm_type}, user_memory2={user_memory2}");
        Ok(Self {
            vcpu,
            vm,
            vm_type,
            user_memory2,
            slots: Vec::new(),
            memory: Vec::new(),
            guest_memfd: None,
            echo: true,
        })
    }

    /// The VM fd, for memslots registered by [`gmem_protocol::kvm`], which
    /// keeps KVM and the gmemd ledger in step.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Keeps `mem` mapped for as long as this VM exists (it is dropped after
    /// the VM), for memslots registered through [`Self::vm_fd`].
    pub fn keep_memory(&mut self, mem: &GuestMemoryMmap) {
        self.memory.push(mem.clone());
    }

    /// The `KVM_CREATE_VM` type of this VM.
    pub fn vm_type(&self) -> u64 {
        self.vm_type
    }

    /// `KVM_CHECK_EXTENSION` on this VM (per-VM answers, e.g. [`KVM_CAP_GUEST_MEMFD_FLAGS`]).
    ///
    /// [`KVM_CAP_GUEST_MEMFD_FLAGS`]: guest_memfd::KVM_CAP_GUEST_MEMFD_FLAGS
    pub fn check_cap(&self, cap: u32) -> i32 {
        self.vm.check_extension_raw(c_ulong::from(cap))
    }

    /// The VM types the host supports (`KVM_CAP_VM_TYPES`, bit `n` = type `n`).
    pub fn vm_types(&self) -> u64 {
        u64::try_from(self.check_cap(KVM_CAP_VM_TYPES)).unwrap_or(0)
    }

    /// Whether [`Self::run`] prints `GMEM-VMM: ...` lines on stdout (default on).
    #[cfg(test)]
    pub fn set_echo(&mut self, echo: bool) {
        self.echo = echo;
    }

    /// The registered memslots.
    pub fn slots(&self) -> &[MemSlot] {
        &self.slots
    }

    /// The first registered guest memory (for [`Self::with_guest_memfd`]: its shared view).
    pub fn guest_memory(&self) -> Option<&GuestMemoryMmap> {
        self.memory.first()
    }
}

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_support {
    /// Whether KVM tests should run: skips (false) without /dev/kvm unless
    /// `GMEM_E2E=require`, which turns a missing /dev/kvm into a failure.
    pub fn kvm_available() -> bool {
        available("/dev/kvm", std::path::Path::new("/dev/kvm").exists())
    }

    /// Whether a test needing `what` should run, given whether it is
    /// `present`: skips (false) without it unless `GMEM_E2E=require`,
    /// which turns its absence into a failure.
    pub fn available(what: &str, present: bool) -> bool {
        if present {
            return true;
        }
        assert!(
            std::env::var("GMEM_E2E").as_deref() != Ok("require"),
            "GMEM_E2E=require but {what} is missing"
        );
        eprintln!("skipping: no {what}");
        false
    }
}
