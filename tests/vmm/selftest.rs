//! `gmem-vmm --selftest`: exercises [`crate::kvm_vm`] with local memory, without gmemd.
//!
//! - [`shared`]: one memfd, mapped afresh for each of several VMs; the boot counter goes
//!   1, 2, 3, ... because it lives in the file.
//! - [`looping`]: the loop mode over a memfd (for watching ticks, or killing mid-run).
//! - [`private`]: the guest runs from a guest_memfd of its own VM; then probes what the kernel
//!   allows around it (private attributes, binding to another VM, reading it after the VM is
//!   gone) and prints each answer as a `GMEM-VMM: private: ...` line.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::guest_code::{self, GuestMode, COUNTER_GPA};
use crate::kvm_vm::{
    errno_name, MiniVm, VmError, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP,
    MEMORY_ATTRIBUTE_PRIVATE, VM_TYPE_SW_PROTECTED,
};

/// Guest RAM size of the self-tests.
pub const MEMORY_SIZE: usize = 1 << 20;
/// Exit budget of a once-mode run (it needs 3).
const ONCE_EXITS: u64 = 100;
/// Page size for attribute experiments.
const PAGE: u64 = 0x1000;

/// Why a self-test failed.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// KVM refused something.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Creating or mapping the memfd failed.
    #[error("memfd: {0}")]
    Memfd(#[from] io::Error),
    /// Mapping it failed.
    #[error("map memfd: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
    /// Reading or writing guest memory failed.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
    /// The guest did not do what it should.
    #[error("{0}")]
    Check(String),
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), SelftestError> {
    if ok {
        Ok(())
    } else {
        Err(SelftestError::Check(msg()))
    }
}

/// A new memfd of `size` bytes.
pub fn create_memfd(name: &str, size: usize) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, size as u64)?;
    Ok(File::from(fd))
}

/// Maps `[0, size)` of `file` as guest RAM at GPA 0 (what the gmemd adapter will produce from
/// received fds).
pub fn map_file(file: &File, size: usize) -> Result<GuestMemoryMmap, SelftestError> {
    Ok(GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file.try_clone()?, 0)),
    )])?)
}

/// Runs the once mode in `runs` fresh VMs over one memfd and checks the counter goes 1..=runs.
pub fn shared(runs: u64) -> Result<(), SelftestError> {
    let file = create_memfd("gmem-vmm-selftest", MEMORY_SIZE)?;
    for expect in 1..=runs {
        let mem = map_file(&file, MEMORY_SIZE)?;
        guest_code::load(&mem)?;
        let mut vm = MiniVm::new()?;
        vm.add_guest_memory(&mem)?;
        log::info!("run {expect}: memslots {:?}", vm.slots());
        let out = vm.run(GuestMode::Once, ONCE_EXITS)?;
        let in_memory = guest_code::read_counter(&mem)?;
        check(
            out.halted && out.counter == Some(expect) && in_memory == expect,
            || format!("run {expect}: guest reported {out:?}, memory holds {in_memory}"),
        )?;
    }
    println!("GMEM-VMM: selftest ok ({runs} runs)");
    Ok(())
}

/// Runs the loop mode over a fresh memfd for at most `max_exits` exits.
pub fn looping(delay: u32, max_exits: u64) -> Result<(), SelftestError> {
    let file = create_memfd("gmem-vmm-loop", MEMORY_SIZE)?;
    let mem = map_file(&file, MEMORY_SIZE)?;
    guest_code::load(&mem)?;
    let mut vm = MiniVm::new()?;
    vm.add_guest_memory(&mem)?;
    let out = vm.run(GuestMode::Loop { delay }, max_exits)?;
    println!(
        "GMEM-VMM: loop stopped after {} exits, {} ticks, memory holds tick {}",
        out.exits,
        out.ticks,
        guest_code::read_ticks(&mem)?
    );
    Ok(())
}

fn report(what: &str, r: Result<(), VmError>) {
    match r {
        Ok(()) => println!("GMEM-VMM: private: {what}: ok"),
        Err(e) => {
            let errno = e
                .errno()
                .map_or(String::new(), |n| format!(" [{}]", errno_name(n)));
            println!("GMEM-VMM: private: {what}: refused: {e}{errno}");
        }
    }
}

/// Runs the once mode from a guest_memfd, then probes the private-memory interfaces.
pub fn private() -> Result<(), SelftestError> {
    let size = MEMORY_SIZE as u64;
    let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    let probe = MiniVm::new()?;
    let supported = probe.guest_memfd_flags();
    println!(
        "GMEM-VMM: private: guest_memfd flags {supported:#x}, memory attributes {:#x}, vm types {:#x}",
        probe.memory_attributes(),
        probe.vm_types()
    );
    check(supported & want == want, || {
        format!("guest_memfd lacks MMAP|INIT_SHARED (KVM reports {supported:#x}); cannot load code")
    })?;

    // 1. The guest runs from the guest_memfd.
    let mut vm = MiniVm::with_guest_memfd(size, want)?;
    let mem = vm
        .guest_memory()
        .cloned()
        .ok_or_else(|| SelftestError::Check("no shared view".into()))?;
    guest_code::load(&mem)?;
    let out = vm.run(GuestMode::Once, ONCE_EXITS)?;
    let in_memory = guest_code::read_counter(&mem)?;
    check(
        out.halted && out.counter == Some(1) && in_memory == 1,
        || format!("guest_memfd run: guest reported {out:?}, memory holds {in_memory}"),
    )?;
    println!("GMEM-VMM: private: guest ran from guest_memfd (flags {want:#x}), counter 1");

    // 2. Private attributes on the default VM type.
    report(
        "KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) on the data page, default VM",
        vm.set_memory_attributes(COUNTER_GPA, PAGE, MEMORY_ATTRIBUTE_PRIVATE),
    );

    // 3. Bind the guest_memfd to a second VM.
    let gmem = vm
        .clone_guest_memfd()
        .ok_or_else(|| SelftestError::Check("no guest_memfd".into()))??;
    let mut other = MiniVm::new()?;
    report(
        "bind the guest_memfd to another VM",
        other
            .add_guest_memfd_memory(&mem, gmem.as_fd(), 0)
            .map(|_| ()),
    );
    drop(other);

    // 4. The guest_memfd outlives its VM: map it again and read the counter.
    drop(mem);
    drop(vm);
    let again = map_file(&File::from(gmem.try_clone()?), MEMORY_SIZE)?;
    let after = guest_code::read_counter(&again)?;
    check(after == 1, || {
        format!("guest_memfd after VM teardown holds counter {after}")
    })?;
    println!("GMEM-VMM: private: guest_memfd kept past its VM still holds counter {after}");

    // 5. A software-protected VM, where private memory exists.
    match sw_protected() {
        Ok(()) => {}
        Err(SelftestError::Vm(e)) => report("KVM_X86_SW_PROTECTED_VM", Err(e)),
        Err(e) => return Err(e),
    }
    println!("GMEM-VMM: selftest ok (private)");
    Ok(())
}

/// On a `KVM_X86_SW_PROTECTED_VM`: code page shared, data page private. The guest sees its
/// private counter (starts at 0, reports 1); the host's shared view of that page stays 0.
fn sw_protected() -> Result<(), SelftestError> {
    let vm_type = VM_TYPE_SW_PROTECTED;
    let mut vm = MiniVm::with_vm_type(vm_type)?;
    let flags = vm.guest_memfd_flags();
    println!(
        "GMEM-VMM: private: VM type {}: guest_memfd flags {flags:#x}, memory attributes {:#x}",
        vm.vm_type(),
        vm.memory_attributes()
    );
    // Private pages live only in the guest_memfd; the shared view is a separate memfd.
    let gmem = vm.create_guest_memfd(MEMORY_SIZE as u64, 0)?;
    let file = create_memfd("gmem-vmm-shared-view", MEMORY_SIZE)?;
    let shared = map_file(&file, MEMORY_SIZE)?;
    guest_code::load(&shared)?;
    vm.add_guest_memfd_memory(&shared, gmem.as_fd(), 0)?;
    vm.set_memory_attributes(COUNTER_GPA, PAGE, MEMORY_ATTRIBUTE_PRIVATE)?;
    let out = vm.run(GuestMode::Once, ONCE_EXITS)?;
    let host_view = guest_code::read_counter(&shared)?;
    check(out.counter == Some(1) && host_view == 0, || {
        format!("SW_PROTECTED: guest reported {out:?}, host view holds {host_view}")
    })?;
    println!("GMEM-VMM: private: SW_PROTECTED VM: guest counter 1 in private memory, host view 0");
    Ok(())
}
