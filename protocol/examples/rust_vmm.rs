//! A rust-vmm VMM whose RAM comes from gmemd: the README's example, compiled.
//!
//! `cargo run -p gmem-protocol --features kvm --example rust_vmm -- SOCKET`

use std::os::fd::AsFd;

use gmem_protocol::guest_memory::{guest_memory, RegionSpec};
use gmem_protocol::kvm::bind_region;
use gmem_protocol::{Client, GuestAddress, MemoryKind, Name, VmId};
use vm_memory::GuestMemoryBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args().nth(1).ok_or("usage: rust_vmm SOCKET")?;
    let vm_id = VmId::from_name(Name::new("vm1")?);
    let mut gmemd = Client::connect(socket, vm_id)?; // the lease
    let ram = Name::new("vm1-ram")?;
    let (fd, info) = gmemd.create_or_open(&ram, 512 << 20, MemoryKind::Memfd)?;
    let mem = guest_memory(&[RegionSpec {
        fd: fd.as_fd(),
        file_offset: 0,
        gpa: GuestAddress(0),
        size: info.size,
    }])?;
    let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
    for (slot, region) in mem.iter().enumerate() {
        // BIND to gmemd first, then KVM_SET_USER_MEMORY_REGION2; undone if KVM refuses.
        // SAFETY: `mem` outlives `vm` (declared before it, dropped after it).
        unsafe { bind_region(&vm, &mut gmemd, u32::try_from(slot)?, region, &ram, None)? };
    }
    println!("{} bytes of gmemd memory bound into KVM", info.size);
    Ok(())
}
