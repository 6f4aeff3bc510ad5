//! The tiny Linux guest of the QEMU end-to-end tests (`tests/guest/`),
//! built by `tests/guest/build-guest.sh` into `<target>/gmem-guest`. The
//! script caches its output, so only the first test process after a change
//! pays for the build; concurrent callers are serialised by its `flock`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Kernel and initramfs of the test guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// `vmlinuz`.
    pub kernel: PathBuf,
    /// `initramfs.cpio.gz`.
    pub initrd: PathBuf,
}

impl Guest {
    /// QEMU arguments that boot it with `params` added to its command line
    /// (`gmem.marker=…`, `gmem.tick=1`, …; see `tests/guest/README.md`).
    pub fn boot_args(&self, params: &str) -> Vec<String> {
        vec![
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            format!("console=ttyS0 panic=-1 quiet {params}"),
            "-no-reboot".into(),
        ]
    }
}

/// The guest, built on first use.
///
/// # Panics
/// If the build fails (its output is in the message).
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(build)
}

/// `<target>/gmem-guest`, from this test binary's path
/// (`<target>/<profile>/deps/NAME-HASH`), so `CARGO_TARGET_DIR` is honoured.
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binaries live in <target>/<profile>/deps");
    target.join("gmem-guest")
}

fn build() -> Guest {
    let out = out_dir();
    let script = crate::workspace_path("tests/guest/build-guest.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} {} failed ({}):\n{}",
        script.display(),
        out.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let guest = Guest {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs.cpio.gz"),
    };
    for file in [&guest.kernel, &guest.initrd] {
        assert!(
            Path::new(file).exists(),
            "{} missing after the build",
            file.display()
        );
    }
    guest
}
