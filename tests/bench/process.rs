//! Child processes whose every wait is bounded and whose failure is an
//! error (a row reads `n/a (…)`), not a panic.

use std::fs::File;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::ChildGuard;

/// How often a wait looks at its children: fine enough for figures of
/// tens of milliseconds and more.
pub const POLL: Duration = Duration::from_millis(1);

/// Runs `cmd` to completion within `timeout`, its output collected in
/// temporary files (a pipe nobody reads while waiting could fill).
///
/// # Errors
/// A spawn failure or the timeout (the process group is killed).
pub fn run(what: &str, mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let (out, err) = (temp()?, temp()?);
    cmd.stdin(Stdio::null())
        .stdout(clone(&out)?)
        .stderr(clone(&err)?);
    let mut child = spawn(what, cmd)?;
    let status = wait_all(std::slice::from_mut(&mut child), timeout)?[0];
    Ok(Output {
        status,
        stdout: read(out)?,
        stderr: read(err)?,
    })
}

/// Runs `cmd` and returns its stdout, or an error with its stderr.
///
/// # Errors
/// As [`run`], or a failing exit status.
pub fn run_ok(what: &str, cmd: Command, timeout: Duration) -> Result<String, String> {
    let out = run(what, cmd, timeout)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Spawns `cmd` in a process group of its own, killed when the guard drops.
///
/// # Errors
/// The spawn's error, naming the program.
pub fn spawn(what: &str, cmd: Command) -> Result<ChildGuard, String> {
    // ChildGuard::spawn panics on a spawn failure; a missing program is an
    // expected failure here, so look first.
    let program = cmd.get_program().to_owned();
    let found = std::path::Path::new(&program).is_file()
        || std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(&program).is_file())
        });
    if !found {
        return Err(format!("{what}: no program {}", program.to_string_lossy()));
    }
    Ok(ChildGuard::spawn(what, cmd))
}

/// Waits until every child has exited, polling every [`POLL`]; returns
/// their statuses in order.
///
/// # Errors
/// The timeout, naming how many still ran (the guards kill them on drop).
pub fn wait_all(children: &mut [ChildGuard], timeout: Duration) -> Result<Vec<ExitStatus>, String> {
    let deadline = Instant::now() + timeout;
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    loop {
        for (child, status) in children.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = child
                    .child()
                    .try_wait()
                    .map_err(|e| format!("waiting for a child: {e}"))?;
            }
        }
        if statuses.iter().all(Option::is_some) {
            return Ok(statuses.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            let running = statuses.iter().filter(|s| s.is_none()).count();
            return Err(format!(
                "{running} of {} still running after {timeout:?}",
                children.len()
            ));
        }
        std::thread::sleep(POLL);
    }
}

fn temp() -> Result<File, String> {
    tempfile::tempfile().map_err(|e| format!("temporary file: {e}"))
}

fn clone(file: &File) -> Result<File, String> {
    file.try_clone().map_err(|e| format!("dup: {e}"))
}

fn read(mut file: File) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|e| format!("reading a child's output: {e}"))?;
    Ok(bytes)
}
