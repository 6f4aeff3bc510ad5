//! The Linux guest of the upgrade rows, built where the tests build it
//! (`<target>/gmem-guest`, so the cache is shared).
//!
//! `gmem_tests::guest::guest()` finds that directory from a test binary's
//! path (`<target>/<profile>/deps/NAME`); this binary lives one level up,
//! so it runs the same build script with the directory itself.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gmem_tests::guest::Guest;

use crate::process::run_ok;

/// Builds the guest (cached by the script); returns its kernel and initrd.
///
/// # Errors
/// The build's failure, with its output.
pub fn build() -> Result<Guest, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/bench
    let target = exe
        .ancestors()
        .nth(2)
        .ok_or("the bench binary is not in <target>/<profile>")?;
    let out: PathBuf = target.join("gmem-guest");
    let script = gmem_tests::workspace_path("tests/guest/build-guest.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(&out);
    // The first build downloads a kernel and busybox with apt-get.
    run_ok("build-guest.sh", cmd, Duration::from_secs(600))?;
    let guest = Guest {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs.cpio.gz"),
    };
    for file in [&guest.kernel, &guest.initrd] {
        if !file.exists() {
            return Err(format!("{} missing after the build", file.display()));
        }
    }
    Ok(guest)
}
