//! The stdlib-only Python client written from PROTOCOL.md alone
//! (`protocol/examples/gmem_client`) against a real gmemd: every check of
//! its conformance scenario must pass, so the spec and the daemon cannot
//! drift apart unnoticed.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gmem_tests::{workspace_path, ChildGuard, Daemon};

/// The whole scenario takes about a second; this only bounds a hang.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The client's last line when nothing differed from the spec.
const PASSED: &str = "all checks passed";

/// `python3` on `PATH`, if any. It may be missing only when `GMEM_E2E` is
/// not `require` (see `gmem_tests::e2e`).
fn python3() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("python3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !gmem_tests::e2e::required(),
            "python3 is required (GMEM_E2E=require) but not on PATH"
        );
        eprintln!("SKIPPED: python3 is not on PATH (set GMEM_E2E=require to make this a failure)");
    }
    found
}

/// Reads a child's pipe to the end on a thread, so the child never blocks on it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    let mut pipe = pipe.expect("piped");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn python_client_from_the_spec_passes() {
    let Some(python) = python3() else { return };
    let daemon = Daemon::start();

    let mut cmd = Command::new(python);
    cmd.arg(workspace_path("protocol/examples/gmem_client"))
        .arg(daemon.socket())
        // No __pycache__ in the source tree; output as it happens.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("GMEMD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group: a hang kills the client and its forked children.
    let mut client = ChildGuard::spawn("gmem_client", cmd);
    let stdout = drain(client.child().stdout.take());
    let stderr = drain(client.child().stderr.take());

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = client.child().try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            client.stop();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    println!("----- gmem_client stdout -----\n{stdout}");
    println!("----- gmem_client stderr -----\n{stderr}");

    let status = status.unwrap_or_else(|| panic!("gmem_client did not finish within {TIMEOUT:?}"));
    assert!(status.success(), "gmem_client failed: {status}");
    assert!(
        stdout.trim_end().ends_with(PASSED),
        "gmem_client's output does not end with {PASSED:?}"
    );
}
