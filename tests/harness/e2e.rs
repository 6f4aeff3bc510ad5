//! When a test that needs KVM or QEMU may skip.
//!
//! It may skip only where the thing is truly absent and `GMEM_E2E=require`
//! is unset. `.ci/run` sets `GMEM_E2E=require`, so in CI a missing QEMU or
//! `/dev/kvm` fails the test instead of passing it silently.

use std::path::Path;

/// Whether missing hardware or tools must fail tests.
pub fn required() -> bool {
    std::env::var("GMEM_E2E").is_ok_and(|v| v == "require")
}

/// `present`, or else the skip rule of the module doc for `what`: panics
/// under `GMEM_E2E=require`, otherwise prints why the test skips and
/// returns `false`. For a test with a probe of its own; call it only where
/// `what` is truly absent from the host, never for a failure of gmemd.
pub fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        !required(),
        "{what} is required (GMEM_E2E=require) but not available"
    );
    eprintln!("SKIPPED: {what} is not available (set GMEM_E2E=require to make this a failure)");
    false
}

/// Whether `/dev/kvm` can be opened; see the module doc for skipping.
pub fn kvm() -> bool {
    let present = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    available("/dev/kvm", present)
}

/// Whether the kernel makes `memfd_secret(2)` files; see the module doc
/// for skipping. Asked directly (not through gmemd), so that a gmemd that
/// fails to make them is not taken for a host without them. Absent means
/// `ENOSYS` (a kernel without it, or booted without `secretmem.enable`);
/// any other failure of the probe panics.
pub fn memfd_secret() -> bool {
    // SAFETY: memfd_secret takes one integer flags argument and returns a
    // new fd or -1; it touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    let present = if ret >= 0 {
        let raw = i32::try_from(ret).expect("fd number");
        // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        true
    } else {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOSYS),
            "probing memfd_secret(2): {err}"
        );
        false
    };
    available("memfd_secret(2)", present)
}

/// Whether KVM makes guest_memfds with `flags` (`GUEST_MEMFD_FLAG_*`) on a
/// VM of the default type: `KVM_CAP_GUEST_MEMFD`, and every bit of `flags`
/// in the VM's `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18); see the module doc
/// for skipping. Needs [`kvm`] first.
pub fn guest_memfd(flags: u64) -> bool {
    /// `KVM_CAP_GUEST_MEMFD_FLAGS`, not in kvm-bindings 0.14.
    const KVM_CAP_GUEST_MEMFD_FLAGS: libc::c_ulong = 244;
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm opens");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let cap = vm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_GUEST_MEMFD));
    let offered = u64::try_from(vm.check_extension_raw(KVM_CAP_GUEST_MEMFD_FLAGS)).unwrap_or(0);
    available(
        &format!(
            "guest_memfd with flags {flags:#x} (KVM_CAP_GUEST_MEMFD {cap}, \
             KVM_CAP_GUEST_MEMFD_FLAGS {offered:#x})"
        ),
        cap > 0 && offered & flags == flags,
    )
}

/// Path of `qemu-system-x86_64`, if present; see the module doc for skipping.
pub fn qemu() -> Option<std::path::PathBuf> {
    let found = on_path("qemu-system-x86_64").or_else(|| {
        let default = Path::new("/usr/bin/qemu-system-x86_64");
        default.exists().then(|| default.to_owned())
    });
    available("qemu-system-x86_64", found.is_some()).then(|| found.expect("checked"))
}

/// The cloud-hypervisor binaries on `PATH` (all three, or none); see the
/// module doc for skipping. `.ci/install-deps` installs them.
pub fn cloud_hypervisor() -> Option<crate::ch::ChTools> {
    let tools = match (
        on_path("cloud-hypervisor"),
        on_path("cloud-hypervisor-pvm"),
        on_path("ch-remote"),
    ) {
        (Some(stock), Some(pvm), Some(remote)) => Some(crate::ch::ChTools { stock, pvm, remote }),
        _ => None,
    };
    let present = tools.is_some() && kvm();
    available(
        "cloud-hypervisor, cloud-hypervisor-pvm and ch-remote",
        present,
    )
    .then(|| tools.expect("checked"))
}

/// Program `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| p.exists())
}
