//! Test harness shared by gmemd's integration and end-to-end tests: a real
//! `gmemd` on a temp socket, child processes that are always killed and
//! reaped, bounded waits, and the rule for tests that need KVM or QEMU.

pub mod ch;
pub mod daemon;
pub mod e2e;
pub mod fdstore;
pub mod guest;
pub mod hugepages;
pub mod process;
pub mod pvh;
pub mod qemu;
pub mod survival;
pub mod systemd;
pub mod tenant;
pub mod vhost;

use std::path::PathBuf;

use gmem_protocol::wire::{Name, VmId};

pub use daemon::Daemon;
pub use process::{wait_until, ChildGuard};

/// Path of a binary built by this workspace (`target/<profile>/NAME`).
///
/// `cargo test` and `cargo nextest` build the test binaries but not the
/// other packages' programs, so the first call in each test process runs
/// `cargo build --bins --examples` for the workspace (a no-op once built; cargo's own
/// lock serializes concurrent callers). Every test then shares those
/// binaries. `GMEM_BIN_DIR` points at prebuilt binaries instead.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GMEM_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let profile_dir = profile_dir();
    BUILT.get_or_init(|| build_bins(&profile_dir));
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Path of an example program of the workspace, built like [`bin`].
pub fn example(name: &str) -> PathBuf {
    let profile_dir = profile_dir();
    BUILT.get_or_init(|| build_bins(&profile_dir));
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// `target/<profile>`, from this test binary's own path (`.../deps/test-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

fn build_bins(profile_dir: &std::path::Path) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let target_dir = profile_dir.parent().expect("target dir");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--examples",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_path(""))
        .status()
        .expect("running cargo build for the test binaries");
    assert!(status.success(), "cargo build --bins --examples failed");
}

/// A workspace-relative path.
pub fn workspace_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .join(rel)
}

/// A validated name; panics on a bad literal.
pub fn name(text: &str) -> Name {
    Name::new(text).expect("valid name")
}

/// A VM identity with a UUID derived from its name.
pub fn vm_file(vm_name: &str, file: &str) -> gmem_protocol::wire::FileRef {
    gmem_protocol::wire::FileRef::vm(
        gmem_protocol::wire::VmSelector::Name(name(vm_name)),
        name(file),
    )
}

/// A VM identity whose UUID is derived from its name.
pub fn vm(text: &str) -> VmId {
    VmId::from_name(name(text))
}

/// The median of benchmark samples (the mean of the middle two for an even
/// count; NaN for none).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}
