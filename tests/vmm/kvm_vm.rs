//! A minimal KVM VM: one vCPU in real mode running [`crate::guest_code`].
//!
//! Guest RAM comes from the caller as a vm-memory [`GuestMemoryMmap`] (normally file-backed
//! regions: a memfd received from gmemd, mapped with [`vm_memory::FileOffset`]); every region
//! becomes one memslot, registered with `KVM_SET_USER_MEMORY_REGION2`. Alternatively
//! [`MiniVm::with_guest_memfd`] backs the guest with a kernel guest_memfd of the VM itself.
//!
//! A [`MiniVm`] keeps a clone of every [`GuestMemoryMmap`] it registered (the clone shares the
//! mappings), so the host addresses in its memslots stay mapped as long as the VM exists.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_ulong;

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region,
    kvm_userspace_memory_region2, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES,
    KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES, KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::mmap::FromRangesError;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion,
};

use crate::guest_code::{
    GuestMode, CODE_GPA, ONCE_ENTRY, PORT_COUNTER_HI, PORT_COUNTER_LO, PORT_TICK_HI, PORT_TICK_LO,
};

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18; not in kvm-bindings 0.14): per-VM mask of the
/// flags `KVM_CREATE_GUEST_MEMFD` accepts.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `GUEST_MEMFD_FLAG_MMAP`: the host may mmap() the guest_memfd.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: pages start shared; without it, touching the host mapping
/// raises SIGBUS (Linux 6.18).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_X86_DEFAULT_VM`.
pub const VM_TYPE_DEFAULT: u64 = kvm_bindings::KVM_X86_DEFAULT_VM as u64;
/// `KVM_X86_SW_PROTECTED_VM`: software-only private memory, for testing.
pub const VM_TYPE_SW_PROTECTED: u64 = kvm_bindings::KVM_X86_SW_PROTECTED_VM as u64;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const MEMORY_ATTRIBUTE_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64;

/// What can go wrong in a [`MiniVm`].
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

/// What one [`MiniVm::run`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// The boot counter the guest reported (complete values only).
    pub counter: Option<u64>,
    /// The last tick the guest reported (loop mode).
    pub last_tick: Option<u64>,
    /// How many ticks were reported.
    pub ticks: u64,
    /// vCPU exits handled.
    pub exits: u64,
    /// Whether the guest halted (otherwise the exit budget ran out).
    pub halted: bool,
}

/// A VM with one vCPU, started in real mode at [`CODE_GPA`] + [`ONCE_ENTRY`].
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
    pub fn check_cap(&self, cap: u32) -> i32 {
        self.vm.check_extension_raw(c_ulong::from(cap))
    }

    /// The guest_memfd flags this VM accepts (`KVM_CAP_GUEST_MEMFD_FLAGS`; 0 if unknown).
    pub fn guest_memfd_flags(&self) -> u64 {
        u64::try_from(self.check_cap(KVM_CAP_GUEST_MEMFD_FLAGS)).unwrap_or(0)
    }

    /// The memory attributes this VM supports (`KVM_CAP_MEMORY_ATTRIBUTES`).
    pub fn memory_attributes(&self) -> u64 {
        u64::try_from(self.check_cap(KVM_CAP_MEMORY_ATTRIBUTES)).unwrap_or(0)
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

    /// Resets the vCPU to real mode at [`CODE_GPA`] with the registers of `mode`.
    fn reset_vcpu(&self, mode: GuestMode) -> Result<(), VmError> {
        let vcpu_err = |what| move |source| VmError::Vcpu { what, source };
        let mut sregs = self.vcpu.get_sregs().map_err(vcpu_err("KVM_GET_SREGS"))?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        self.vcpu
            .set_sregs(&sregs)
            .map_err(vcpu_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE_GPA + u64::from(ONCE_ENTRY),
            rflags: 2,
            rbx: mode.rbx(),
            rsi: mode.rsi(),
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(vcpu_err("KVM_SET_REGS"))
    }

    /// Boots the guest code (already loaded at [`CODE_GPA`]) in `mode` and handles at most
    /// `max_exits` vCPU exits. Returns when the guest halts or the budget is spent
    /// ([`RunOutcome::halted`] tells which). With echo on, prints `GMEM-VMM: counter N` and
    /// `GMEM-VMM: tick N` lines on stdout as values complete.
    pub fn run(&mut self, mode: GuestMode, max_exits: u64) -> Result<RunOutcome, VmError> {
        self.reset_vcpu(mode)?;
        let mut out = RunOutcome::default();
        let mut counter_lo = 0u32;
        let mut tick_lo = 0u32;
        while out.exits < max_exits {
            out.exits += 1;
            let (port, value) = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => (port, le_u32(data)),
                Ok(VcpuExit::Hlt) => {
                    out.halted = true;
                    break;
                }
                Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                    return Err(VmError::MemoryFault { gpa, size, flags })
                }
                Ok(exit) => return Err(VmError::UnexpectedExit(format!("{exit:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(VmError::Run(e)),
            };
            match port {
                PORT_COUNTER_LO => counter_lo = value,
                PORT_COUNTER_HI => {
                    let n = (u64::from(value) << 32) | u64::from(counter_lo);
                    out.counter = Some(n);
                    self.echo_line(format_args!("counter {n}"));
                }
                PORT_TICK_LO => tick_lo = value,
                PORT_TICK_HI => {
                    let n = (u64::from(value) << 32) | u64::from(tick_lo);
                    out.last_tick = Some(n);
                    out.ticks += 1;
                    self.echo_line(format_args!("tick {n}"));
                }
                port => {
                    return Err(VmError::UnexpectedIo {
                        port,
                        data: value.to_le_bytes().to_vec(),
                    })
                }
            }
        }
        log::debug!("run {mode:?}: {out:?}");
        Ok(out)
    }

    fn echo_line(&self, msg: std::fmt::Arguments<'_>) {
        if !self.echo {
            return;
        }
        let mut so = io::stdout().lock();
        if let Err(e) = writeln!(so, "GMEM-VMM: {msg}").and_then(|()| so.flush()) {
            log::warn!("stdout: {e}");
        }
    }
}

/// Little-endian value of an `out` of 1, 2 or 4 bytes.
fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_code;

    /// Whether KVM tests should run: skips (false) without /dev/kvm unless
    /// `GMEM_E2E=require`, which turns a missing /dev/kvm into a failure.
    fn kvm_available() -> bool {
        if std::path::Path::new("/dev/kvm").exists() {
            return true;
        }
        assert!(
            std::env::var("GMEM_E2E").as_deref() != Ok("require"),
            "GMEM_E2E=require but /dev/kvm is missing"
        );
        eprintln!("skipping: /dev/kvm not present");
        false
    }

    fn memfd_memory(size: usize) -> (File, GuestMemoryMmap) {
        let fd =
            rustix::fs::memfd_create("gmem-vmm-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size as u64).unwrap();
        let file = File::from(fd);
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        (file, mem)
    }

    #[test]
    fn le_u32_pads_short_outs() {
        assert_eq!(le_u32(&[1, 2, 3, 4]), 0x0403_0201);
        assert_eq!(le_u32(&[0xff]), 0xff);
        assert_eq!(le_u32(&[]), 0);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(9999), "E?");
    }

    #[test]
    fn kvm_counter_persists_across_vms() {
        if !kvm_available() {
            return;
        }
        let (file, mem) = memfd_memory(1 << 20);
        guest_code::load(&mem).unwrap();
        for expect in 1..=3u64 {
            let mut vm = MiniVm::new().unwrap();
            vm.set_echo(false);
            // A fresh mapping of the same file for every VM, like a restarted VMM.
            let view = GuestMemoryMmap::from_ranges_with_files([(
                GuestAddress(0),
                1 << 20,
                Some(FileOffset::new(file.try_clone().unwrap(), 0)),
            )])
            .unwrap();
            let slots = vm.add_guest_memory(&view).unwrap();
            assert_eq!(slots.len(), 1);
            assert_eq!(slots[0].guest_phys_addr, 0);
            let out = vm.run(GuestMode::Once, 100).unwrap();
            assert!(out.halted, "{out:?}");
            assert_eq!(out.counter, Some(expect));
            assert_eq!(guest_code::read_counter(&mem).unwrap(), expect);
        }
    }

    #[test]
    fn kvm_counter_carries_into_high_half() {
        if !kvm_available() {
            return;
        }
        let (_file, mem) = memfd_memory(0x2000);
        guest_code::load(&mem).unwrap();
        guest_code::write_counters(&mem, u64::from(u32::MAX), 0).unwrap();
        let mut vm = MiniVm::new().unwrap();
        vm.set_echo(false);
        vm.add_guest_memory(&mem).unwrap();
        let out = vm.run(GuestMode::Once, 100).unwrap();
        assert_eq!(out.counter, Some(1 << 32));
        assert_eq!(guest_code::read_counter(&mem).unwrap(), 1 << 32);
    }

    #[test]
    fn kvm_loop_mode_ticks_until_budget() {
        if !kvm_available() {
            return;
        }
        let (_file, mem) = memfd_memory(0x2000);
        guest_code::load(&mem).unwrap();
        let mut vm = MiniVm::new().unwrap();
        vm.set_echo(false);
        vm.add_guest_memory(&mem).unwrap();
        // 2 exits for the boot counter, then 2 per tick.
        let out = vm.run(GuestMode::Loop { delay: 1000 }, 2 + 2 * 5).unwrap();
        assert!(!out.halted);
        assert_eq!(out.counter, Some(1));
        assert_eq!(out.ticks, 5);
        assert_eq!(out.last_tick, Some(5));
        // The guest stores before it reports, and it stopped right after a report.
        assert_eq!(guest_code::read_ticks(&mem).unwrap(), 5);
    }

    #[test]
    fn kvm_guest_memfd_runs_the_guest() {
        if !kvm_available() {
            return;
        }
        let probe = MiniVm::new().unwrap();
        let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        if probe.check_cap(KVM_CAP_GUEST_MEMFD) <= 0 || probe.guest_memfd_flags() & want != want {
            eprintln!("skipping: no guest_memfd with MMAP|INIT_SHARED");
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
