//! KVM memslots from gmemd memory, with the ledger and KVM kept in step.
//!
//! The order makes disagreement impossible: gmemd is asked first, so a BIND
//! it refuses never reaches KVM; a memslot KVM refuses is UNBOUND again
//! before the error is returned. Removal deletes the KVM slot first, so the
//! ledger never shows memory free while the guest can still reach it.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::{kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryRegion, GuestRegionMmap};

use crate::client::{Client, ClientError};
use crate::wire::{BindRequest, Name};

/// Errors of binding memslots.
#[derive(Debug, thiserror::Error)]
pub enum KvmBindError {
    /// gmemd refused the BIND; KVM was not touched.
    #[error("gmemd refused slot {slot}")]
    Refused {
        /// Slot.
        slot: u32,
        /// gmemd's refusal.
        #[source]
        source: ClientError,
    },
    /// KVM refused the memslot; the BIND was undone (`rolled_back`) or, if
    /// the UNBIND failed too, the connection is broken and ends the lease.
    #[error("KVM refused memslot {slot} (gmemd binding rolled back: {rolled_back})")]
    Kvm {
        /// Slot.
        slot: u32,
        /// Whether the gmemd binding was removed again.
        rolled_back: bool,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The region has no file offset: it was not built from a gmemd fd.
    #[error("region at {0:#x} is not file-backed")]
    NotFileBacked(u64),
    /// Deleting the memslot failed.
    #[error("KVM could not delete memslot {slot}")]
    Delete {
        /// Slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// UNBIND failed after the memslot was deleted.
    #[error("gmemd refused to unbind slot {slot}")]
    Unbind {
        /// Slot.
        slot: u32,
        /// gmemd's refusal.
        #[source]
        source: ClientError,
    },
}

/// A kernel guest_memfd range backing a memslot's private memory.
#[derive(Debug, Clone, Copy)]
pub struct GuestMemfdRange<'fd> {
    /// The guest_memfd, created by this VM.
    pub fd: BorrowedFd<'fd>,
    /// Offset of the slot's memory in it.
    pub offset: u64,
}

/// Reports the BIND of `region` (backed by gmemd file `file`) and registers
/// it as memslot `slot` with `KVM_SET_USER_MEMORY_REGION2`.
///
/// # Safety
/// `region`'s mapping must stay mapped for as long as the memslot exists
/// (until [`unbind_region`] or the VM is dropped): KVM lets the guest reach
/// that host memory directly.
///
/// # Errors
/// [`KvmBindError::Refused`] (KVM untouched) or [`KvmBindError::Kvm`].
pub unsafe fn bind_region(
    vm: &VmFd,
    client: &mut Client,
    slot: u32,
    region: &GuestRegionMmap,
    file: &Name,
    guest_memfd: Option<GuestMemfdRange<'_>>,
) -> Result<(), KvmBindError> {
    let gpa = region.start_addr();
    let file_offset = region
        .file_offset()
        .ok_or(KvmBindError::NotFileBacked(gpa.0))?
        .start();
    let bind = BindRequest::new(slot, gpa, file.clone(), file_offset, region.len());
    client
        .bind(&bind)
        .map_err(|source| KvmBindError::Refused { slot, source })?;
    let mut memslot = kvm_userspace_memory_region2 {
        slot,
        guest_phys_addr: gpa.0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        ..Default::default()
    };
    if let Some(gmem) = guest_memfd {
        memslot.flags |= KVM_MEM_GUEST_MEMFD;
        memslot.guest_memfd = u32::try_from(gmem.fd.as_raw_fd()).unwrap_or(u32::MAX);
        memslot.guest_memfd_offset = gmem.offset;
    }
    // SAFETY: the caller keeps `region` mapped while the slot exists (this
    // function's contract), and `memslot` describes exactly that mapping.
    if let Err(source) = unsafe { vm.set_user_memory_region2(memslot) } {
        let rolled_back = client.unbind(slot).is_ok();
        return Err(KvmBindError::Kvm {
            slot,
            rolled_back,
            source,
        });
    }
    log::debug!(
        "memslot {slot}: gpa {:#x} = {file} +{file_offset:#x}",
        gpa.0
    );
    Ok(())
}

/// Deletes memslot `slot` from KVM, then reports the UNBIND.
///
/// # Errors
/// [`KvmBindError::Delete`] (nothing reported) or [`KvmBindError::Unbind`].
pub fn unbind_region(
    vm: &VmFd,
    client: &mut Client,
    slot: u32,
    gpa: GuestAddress,
) -> Result<(), KvmBindError> {
    let memslot = kvm_userspace_memory_region2 {
        slot,
        guest_phys_addr: gpa.0,
        memory_size: 0,
        ..Default::default()
    };
    // SAFETY: a zero-sized region deletes the slot; no host memory is handed
    // to KVM by this call.
    unsafe { vm.set_user_memory_region2(memslot) }
        .map_err(|source| KvmBindError::Delete { slot, source })?;
    client
        .unbind(slot)
        .map_err(|source| KvmBindError::Unbind { slot, source })
}
