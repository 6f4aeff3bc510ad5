//! What the bench needs before it measures anything: release builds of
//! gmemd and gmemctl beside it, the daemon's environment as shipped, and
//! room for a thousand connections.
//!
//! The harness finds programs from a test binary's path
//! (`target/PROFILE/deps/NAME`) and builds them on first use; this binary
//! lives one level up (`target/release/bench`), so it points the harness
//! at its own directory with `GMEM_BIN_DIR` and builds nothing: a bench
//! that compiled the daemon would measure whatever state the tree is in
//! without saying so.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::process::{getrlimit, setrlimit, Resource};

/// The programs the bench runs.
const PROGRAMS: [&str; 2] = ["gmemd", "gmemctl"];

/// Prepares the process; returns notes for the report.
///
/// # Errors
/// A missing gmemd or gmemctl, with the command that builds them.
pub fn prepare() -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let dir = match std::env::var_os("GMEM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            let dir = exe
                .parent()
                .ok_or("the bench binary has no directory")?
                .to_owned();
            std::env::set_var("GMEM_BIN_DIR", &dir);
            dir
        }
    };
    for program in PROGRAMS {
        let path = dir.join(program);
        if !path.is_file() {
            return Err(format!(
                "no {program} at {}: build what the bench measures first:\n    \
                 cargo build --release -p gmemd -p gmemctl\n\
                 (or point GMEM_BIN_DIR at a directory holding gmemd and gmemctl)",
                path.display()
            ));
        }
    }
    if dir.file_name().and_then(|n| n.to_str()) != Some("release") {
        notes.push(format!(
            "programs from {}, not a release directory: the figures are not the shipped ones",
            dir.display()
        ));
    }
    if let Some(stale) = stale_programs(&dir) {
        notes.push(stale);
    }
    // The daemon as shipped: info level, which logs every bind and unbind,
    // its state directory on tmpfs like its default /run/gmemd (the
    // journal is written before each reply).
    if std::env::var_os("GMEMD_TEST_LOG").is_none() {
        std::env::set_var("GMEMD_TEST_LOG", "info");
    }
    if Path::new("/dev/shm").is_dir() && std::env::var_os("TMPDIR").is_none() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    notes.extend(raise_nofile());
    Ok(notes)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit: the ledger
/// group holds a thousand leases and the request group 200 clients, each a
/// socket. gmemd raises its own (inherited) limit the same way.
fn raise_nofile() -> Option<String> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return None;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "cannot raise RLIMIT_NOFILE from {:?} to {:?}: {e}",
            limit.current, limit.maximum
        )),
    }
}

/// A note when gmemd or gmemctl is older than a source file it is built
/// from: the bench would measure an old build.
fn stale_programs(dir: &Path) -> Option<String> {
    let sources = ["backend/gmemd/src", "backend/gmemctl/src", "protocol/src"]
        .map(gmem_tests::workspace_path);
    let newest_source = sources.iter().filter_map(|d| newest(d)).max()?;
    let stale: Vec<&str> = PROGRAMS
        .into_iter()
        .filter(|p| modified(&dir.join(p)).is_some_and(|built| built < newest_source))
        .collect();
    (!stale.is_empty()).then(|| {
        format!(
            "{} older than the sources: rebuild with `cargo build --release -p gmemd -p gmemctl`",
            stale.join(" and ")
        )
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The newest modification time of a file under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            self::newest(&path)
        } else {
            modified(&path)
        };
        newest = newest.max(time);
    }
    newest
}
