//! `gmem-vmm --socket S --vm NAME`: the guest's RAM comes from gmemd.
//!
//! The VMM opens a lease for its VM, creates or opens the memory file, maps
//! it with the vm-memory adapter, and registers it with KVM through
//! [`gmem_protocol::kvm`], which reports every BIND/UNBIND so the ledger and
//! KVM agree. `--private` instead creates a kernel guest_memfd for its own
//! VM, DEPOSITs it with gmemd, and runs the guest from it.

use std::os::fd::AsFd;

use gmem_protocol::guest_memory::{guest_memory, RegionSpec};
use gmem_protocol::kvm::{bind_region, unbind_region, GuestMemfdRange};
use gmem_protocol::wire::{GuestAddress, LeaseId, MemoryKind, Name, VmId};
use gmem_protocol::Client;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::guest_code::{self, GuestMode, COUNTER_GPA};
use crate::kvm_vm::{
    errno_name, MiniVm, VmError, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP,
    MEMORY_ATTRIBUTE_PRIVATE,
};

/// Why a gmemd-backed run failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// gmemd refused or the connection failed.
    #[error("gmemd")]
    Gmemd(#[from] gmem_protocol::ClientError),
    /// Mapping the received fd failed.
    #[error("mapping gmemd memory")]
    Map(#[from] gmem_protocol::guest_memory::GuestMemoryError),
    /// Registering or removing a memslot failed.
    #[error("memslot")]
    Memslot(#[from] gmem_protocol::kvm::KvmBindError),
    /// KVM refused something else.
    #[error("KVM")]
    Vm(#[from] VmError),
    /// Loading code or reading the counter.
    #[error("guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The guest did not halt within its exit budget.
    #[error("the guest did not halt within {0} exits")]
    NoHalt(u64),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// gmemd's socket.
    pub socket: String,
    /// The VM identity of the lease.
    pub vm: VmId,
    /// The memory file (created if missing).
    pub file: Name,
    /// Its size.
    pub size: u64,
    /// Once or looping.
    pub mode: GuestMode,
    /// vCPU exit budget.
    pub max_exits: u64,
}

/// Slot of the guest's RAM.
const RAM_SLOT: u32 = 0;

/// Runs the guest once (or looping) from a gmemd memory file.
///
/// # Errors
/// [`VmmError`].
pub fn run_shared(opts: &Options) -> Result<(), VmmError> {
    let mut client = Client::connect(&opts.socket, opts.vm.clone())?;
    let (fd, info) = client.create_or_open(&opts.file, opts.size, MemoryKind::Memfd)?;
    println!(
        "GMEM-VMM: lease {} for VM {}, file {} ({} bytes, created: {})",
        client.lease().map_or(0, LeaseId::get),
        opts.vm,
        opts.file,
        info.size,
        info.created
    );
    let mem = guest_memory(&[RegionSpec {
        fd: fd.as_fd(),
        file_offset: 0,
        gpa: GuestAddress(0),
        size: info.size,
    }])?;
    guest_code::load(&mem)?;
    let mut vm = MiniVm::new()?;
    vm.keep_memory(&mem);
    let region = mem.iter().next().expect("one region");
    // SAFETY: `vm` keeps `mem` mapped (keep_memory above) until the VM, and
    // with it the memslot, is gone.
    unsafe { bind_region(vm.vm_fd(), &mut client, RAM_SLOT, region, &opts.file, None)? };
    println!(
        "GMEM-VMM: bound slot {RAM_SLOT} gpa 0x0 size {:#x}",
        info.size
    );
    run_and_report(&mut vm, &mem, opts)?;
    unbind_region(vm.vm_fd(), &mut client, RAM_SLOT, GuestAddress(0))?;
    println!("GMEM-VMM: unbound slot {RAM_SLOT}");
    Ok(())
}

/// Runs the guest from a guest_memfd of this VM, deposited with gmemd.
///
/// # Errors
/// [`VmmError`].
pub fn run_private(opts: &Options) -> Result<(), VmmError> {
    let mut client = Client::connect(&opts.socket, opts.vm.clone())?;
    let mut vm = MiniVm::new()?;
    let supported = vm.guest_memfd_flags();
    let flags = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    println!("GMEM-VMM: guest_memfd flags offered {supported:#x}, using {flags:#x}");
    let gmem = vm.create_guest_memfd(opts.size, flags)?;
    let info = client.deposit(&opts.file, MemoryKind::GuestMemfd, gmem.as_fd())?;
    println!(
        "GMEM-VMM: deposited guest_memfd as {} ({} bytes)",
        opts.file, info.size
    );
    // The MMAP flag lets the host map the guest_memfd: that mapping is the
    // shared view KVM uses for this slot's userspace_addr.
    let mem = guest_memory(&[RegionSpec {
        fd: gmem.as_fd(),
        file_offset: 0,
        gpa: GuestAddress(0),
        size: info.size,
    }])?;
    guest_code::load(&mem)?;
    vm.keep_memory(&mem);
    let region = mem.iter().next().expect("one region");
    let range = GuestMemfdRange {
        fd: gmem.as_fd(),
        offset: 0,
    };
    // SAFETY: `vm` keeps `mem` mapped until the VM and its memslot are gone.
    unsafe {
        bind_region(
            vm.vm_fd(),
            &mut client,
            RAM_SLOT,
            region,
            &opts.file,
            Some(range),
        )?;
    };
    println!("GMEM-VMM: bound guest_memfd slot {RAM_SLOT}");
    match vm.set_memory_attributes(COUNTER_GPA, 0x1000, MEMORY_ATTRIBUTE_PRIVATE) {
        Ok(()) => println!("GMEM-VMM: KVM_SET_MEMORY_ATTRIBUTES(PRIVATE): accepted"),
        Err(e) => println!(
            "GMEM-VMM: KVM_SET_MEMORY_ATTRIBUTES(PRIVATE): refused, {} ({e})",
            e.errno().map_or("?", errno_name)
        ),
    }
    run_and_report(&mut vm, &mem, opts)?;
    unbind_region(vm.vm_fd(), &mut client, RAM_SLOT, GuestAddress(0))?;
    Ok(())
}

fn run_and_report(vm: &mut MiniVm, mem: &GuestMemoryMmap, opts: &Options) -> Result<(), VmmError> {
    let out = vm.run(opts.mode, opts.max_exits)?;
    if matches!(opts.mode, GuestMode::Once) && !out.halted {
        return Err(VmmError::NoHalt(opts.max_exits));
    }
    let counter = guest_code::read_counter(mem)?;
    println!("GMEM-VMM: done, counter in memory {counter}");
    Ok(())
}
