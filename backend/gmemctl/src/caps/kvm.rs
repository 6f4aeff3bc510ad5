//! The KVM probes: system-wide and per-VM capabilities, and guest_memfd
//! creation with every flag combination a VM reports.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_ulong;

use kvm_bindings::{kvm_create_guest_memfd, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES};
use kvm_ioctls::{Kvm, VmFd};

use super::{
    Bitmask, GmemAttempt, Probed, VmTypeProbe, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP,
    GUEST_MEMFD_FLAG_NAMES, KVM_CAP_GUEST_MEMFD_FLAGS, MEMORY_ATTRIBUTE_NAMES, PROBE_GMEM_SIZE,
    VM_TYPE_NAMES,
};

/// `KVM_CHECK_EXTENSION` on the system fd; negative return values become errors.
pub(super) fn check_sys(kvm: &Kvm, cap: u32) -> Probed<u64> {
    check_result(kvm.check_extension_raw(c_ulong::from(cap)))
}

/// `KVM_CHECK_EXTENSION` on a VM fd.
fn check_vm(vm: &VmFd, cap: u32) -> Probed<u64> {
    check_result(vm.check_extension_raw(c_ulong::from(cap)))
}

fn check_result(ret: i32) -> Probed<u64> {
    match u64::try_from(ret) {
        Ok(v) => Probed::ok(v),
        // The ioctl wrapper returns -1 and leaves errno set.
        Err(_) => Probed::err(format!(
            "KVM_CHECK_EXTENSION: {}",
            io::Error::last_os_error()
        )),
    }
}

impl<T> Probed<T> {
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Probed<U> {
        Probed {
            value: self.value.map(f),
            error: self.error,
        }
    }
}

fn vm_type_name(vm_type: u64) -> String {
    VM_TYPE_NAMES
        .iter()
        .find(|(t, _)| *t == vm_type)
        .map_or_else(|| format!("type {vm_type}"), |(_, n)| (*n).to_string())
}

/// Creates a VM of `vm_type` and asks it the per-VM questions.
pub(super) fn probe_vm_type(kvm: &Kvm, vm_type: u64) -> VmTypeProbe {
    let mut p = VmTypeProbe {
        vm_type,
        name: vm_type_name(vm_type),
        create: Probed::ok(true),
        guest_memfd_flags: Probed::err("no VM"),
        memory_attributes: Probed::err("no VM"),
        guest_memfd_create: Vec::new(),
    };
    let vm = match kvm.create_vm_with_type(vm_type) {
        Ok(vm) => vm,
        Err(e) => {
            let msg = format!(
                "KVM_CREATE_VM type {vm_type}: {}",
                io::Error::from_raw_os_error(e.errno())
            );
            log::debug!("caps: {msg}");
            p.create = Probed::err(msg);
            return p;
        }
    };
    p.guest_memfd_flags = check_vm(&vm, KVM_CAP_GUEST_MEMFD_FLAGS)
        .map(|v| Bitmask::decode(v, GUEST_MEMFD_FLAG_NAMES));
    p.memory_attributes = check_vm(&vm, KVM_CAP_MEMORY_ATTRIBUTES)
        .map(|v| Bitmask::decode(v, MEMORY_ATTRIBUTE_NAMES));
    let gmem_cap = check_vm(&vm, KVM_CAP_GUEST_MEMFD).value.unwrap_or(0);
    if gmem_cap == 0 {
        return p;
    }
    let flags = p.guest_memfd_flags.value.as_ref().map_or(0, |b| b.raw);
    p.guest_memfd_create = flag_combinations(flags)
        .into_iter()
        .map(|f| try_create_gmem(&vm, f))
        .collect();
    p
}

/// Every subset of the set bits of `flags`, `0` first.
pub fn flag_combinations(flags: u64) -> Vec<u64> {
    let bits: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|m| flags & m != 0)
        .collect();
    // More than 16 bits would mean 65536 attempts; cap it (there are 2 today).
    let bits = &bits[..bits.len().min(16)];
    (0..(1u32 << bits.len()))
        .map(|sel| {
            bits.iter()
                .enumerate()
                .filter(|(i, _)| sel & (1 << i) != 0)
                .fold(0, |acc, (_, m)| acc | m)
        })
        .collect()
}

fn try_create_gmem(vm: &VmFd, flags: u64) -> GmemAttempt {
    let mut a = GmemAttempt {
        flags: Bitmask::decode(flags, GUEST_MEMFD_FLAG_NAMES),
        created: false,
        host_mmap: None,
        error: None,
    };
    let req = kvm_create_guest_memfd {
        size: PROBE_GMEM_SIZE,
        flags,
        reserved: [0; 6],
    };
    let fd = match vm.create_guest_memfd(req) {
        Ok(fd) => {
            // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        Err(e) => {
            a.error = Some(format!(
                "KVM_CREATE_GUEST_MEMFD: {}",
                io::Error::from_raw_os_error(e.errno())
            ));
            return a;
        }
    };
    a.created = true;
    if flags & GUEST_MEMFD_FLAG_MMAP != 0 {
        match try_mmap_write(&fd, flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0) {
            Ok(()) => a.host_mmap = Some(true),
            Err(e) => {
                a.host_mmap = Some(false);
                a.error = Some(e);
            }
        }
    }
    a
}

/// Maps the first page of `fd` shared; when `write` is set, also writes a byte and reads it
/// back.
///
/// Touching a guest_memfd page that is not shared raises SIGBUS, and in Linux 6.18 pages are
/// shared only with `INIT_SHARED`, so callers pass `write` only for that flag.
fn try_mmap_write(fd: &OwnedFd, write: bool) -> Result<(), String> {
    const LEN: usize = 4096;
    // SAFETY: a fresh shared mapping chosen by the kernel (null hint); it aliases no Rust
    // object and is unmapped below before anything else can see it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    let read_back = if write {
        // SAFETY: `ptr` is a valid, writable, LEN-byte mapping created above, and the caller
        // only asks to write when the guest_memfd's pages are shared (no SIGBUS).
        unsafe {
            std::ptr::write_volatile(ptr.cast::<u8>(), 0x5a);
            Some(std::ptr::read_volatile(ptr.cast::<u8>()))
        }
    } else {
        None
    };
    // SAFETY: unmaps exactly the mapping created above; no reference into it survives.
    let rc = unsafe { libc::munmap(ptr, LEN) };
    if rc != 0 {
        return Err(format!("munmap: {}", io::Error::last_os_error()));
    }
    match read_back {
        Some(0x5a) | None => Ok(()),
        Some(b) => Err(format!("mmap: wrote 0x5a, read back {b:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_flag_combinations() {
        assert_eq!(flag_combinations(0), [0]);
        assert_eq!(flag_combinations(1), [0, 1]);
        let mut c = flag_combinations(0b1010);
        c.sort_unstable();
        assert_eq!(c, [0, 0b10, 0b1000, 0b1010]);
    }
}
