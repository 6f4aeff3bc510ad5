//! Memslot management: registering guest memory with `KVM_SET_USER_MEMORY_REGION(2)`, one
//! memslot per [`GuestMemoryMmap`] region, optionally bound to a guest_memfd.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use kvm_bindings::{
    kvm_userspace_memory_region, kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD,
};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{MiniVm, VmError};

/// How a memslot is backed by a guest_memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GmemBinding {
    /// The guest_memfd (owned elsewhere: by the [`MiniVm`] or the caller).
    pub fd: RawFd,
    /// Offset of the slot's first byte in the guest_memfd.
    pub offset: u64,
}

/// One registered memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSlot {
    /// Slot number.
    pub slot: u32,
    /// Guest-physical start.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the slot's first byte (the shared view).
    pub userspace_addr: u64,
    /// The guest_memfd behind the slot (`KVM_MEM_GUEST_MEMFD`), if any.
    pub guest_memfd: Option<GmemBinding>,
}

impl MiniVm {
    /// Registers every region of `mem` as one memslot (numbered after the existing ones).
    /// `mem` is kept (a clone sharing the mappings) for as long as the VM lives.
    pub fn add_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<&[MemSlot], VmError> {
        self.register(mem, None)
    }

    /// Like [`Self::add_guest_memory`], but binds the slots to `gmem` (`KVM_MEM_GUEST_MEMFD`).
    /// `mem` is the shared view of the guest_memfd range starting at `gmem_offset`: the region
    /// at guest address `a` maps guest_memfd offset `gmem_offset + (a - first address)`.
    /// The guest_memfd must come from this VM ([`Self::create_guest_memfd`]) and stay open.
    pub fn add_guest_memfd_memory(
        &mut self,
        mem: &GuestMemoryMmap,
        gmem: BorrowedFd<'_>,
        gmem_offset: u64,
    ) -> Result<&[MemSlot], VmError> {
        if !self.user_memory2 {
            return Err(VmError::MissingCap("KVM_CAP_USER_MEMORY2"));
        }
        self.register(mem, Some((gmem.as_raw_fd(), gmem_offset)))
    }

    fn register(
        &mut self,
        mem: &GuestMemoryMmap,
        gmem: Option<(RawFd, u64)>,
    ) -> Result<&[MemSlot], VmError> {
        let first_new = self.slots.len();
        let base = mem.iter().next().map_or(0, |r| r.start_addr().raw_value());
        for region in mem.iter() {
            let gpa = region.start_addr().raw_value();
            let size = region.len();
            let slot = u32::try_from(self.slots.len()).map_err(|_| VmError::BadRegion {
                gpa,
                reason: "too many memslots",
            })?;
            let guest_memfd = gmem.map(|(fd, off)| GmemBinding {
                fd,
                offset: off + (gpa - base),
            });
            let ms = MemSlot {
                slot,
                guest_phys_addr: gpa,
                size,
                userspace_addr: region.as_ptr() as u64,
                guest_memfd,
            };
            self.set_slot(&ms)?;
            log::debug!("memslot {ms:?}");
            self.slots.push(ms);
        }
        self.memory.push(mem.clone());
        Ok(&self.slots[first_new..])
    }

    fn set_slot(&self, ms: &MemSlot) -> Result<(), VmError> {
        let (flags, gmem_fd, gmem_offset) = match ms.guest_memfd {
            Some(b) => {
                let fd = u32::try_from(b.fd).map_err(|_| VmError::BadRegion {
                    gpa: ms.guest_phys_addr,
                    reason: "negative guest_memfd fd",
                })?;
                (KVM_MEM_GUEST_MEMFD, fd, b.offset)
            }
            None => (0, 0, 0),
        };
        let err = |source| VmError::SetMemoryRegion {
            slot: ms.slot,
            gpa: ms.guest_phys_addr,
            size: ms.size,
            flags,
            source,
        };
        if self.user_memory2 {
            let region = kvm_userspace_memory_region2 {
                slot: ms.slot,
                flags,
                guest_phys_addr: ms.guest_phys_addr,
                memory_size: ms.size,
                userspace_addr: ms.userspace_addr,
                guest_memfd_offset: gmem_offset,
                guest_memfd: gmem_fd,
                pad1: 0,
                pad2: [0; 14],
            };
            // SAFETY: [userspace_addr, userspace_addr + size) is a live read/write mapping
            // owned by a GuestMemoryMmap that `register` keeps in `self.memory`; fields are
            // declared so the VM (and with it the memslot) is dropped before that mapping.
            unsafe { self.vm.set_user_memory_region2(region) }.map_err(err)
        } else {
            let region = kvm_userspace_memory_region {
                slot: ms.slot,
                flags,
                guest_phys_addr: ms.guest_phys_addr,
                memory_size: ms.size,
                userspace_addr: ms.userspace_addr,
            };
            // SAFETY: as above: the mapping outlives the memslot.
            unsafe { self.vm.set_user_memory_region(region) }.map_err(err)
        }
    }
}
