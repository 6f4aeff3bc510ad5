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

fn available(what: &str, present: bool) -> bool {
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
