//! The daemon side of the bench: sessions with bounded waits, what the
//! built gmemd and gmemctl support, and the warm pools.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gmem_protocol::wire::VmId;
use gmem_protocol::Client;
use gmem_tests::Daemon;
use serde_json::Value;

use crate::process;

/// Bound on any one reply from gmemd.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A session on `socket`: a lease for `vm`, or a control session; its
/// HELLO and every reply bounded by [`REPLY_TIMEOUT`].
///
/// # Errors
/// Connecting, or gmemd's refusal.
pub fn session(socket: &Path, vm: Option<VmId>) -> Result<Client, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| format!("socket timeout: {e}"))?;
    Client::handshake(stream, vm).map_err(|e| format!("HELLO: {}", chain(&e)))
}

/// An error with its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    gmem_protocol::error_chain(e)
}

/// Whether `program --help` (or `program SUBCOMMAND --help`) lists `flag`:
/// the bench runs against a daemon that may not have a feature yet, and
/// says so in the row instead of waiting for a start that fails.
pub fn supports(program: &str, subcommand: Option<&str>, flag: &str) -> bool {
    let mut cmd = Command::new(gmem_tests::bin(program));
    cmd.args(subcommand).arg("--help");
    process::run_ok(program, cmd, Duration::from_secs(10))
        .is_ok_and(|help| help.split_whitespace().any(|w| w.starts_with(flag)))
}

/// `--pool` of one prefaulted memfd of `size` bytes.
pub fn pool_arg(size: u64) -> String {
    format!("{}M:memfdx1", size >> 20)
}

/// Starts a gmemd keeping one prefaulted memfd of `size` bytes ready.
///
/// # Errors
/// A gmemd without `--pool`, or a pool that does not fill in time.
pub fn start_with_pool(size: u64, extra: &[&str]) -> Result<Daemon, String> {
    if !supports("gmemd", None, "--pool") {
        return Err("gmemd has no --pool yet".to_owned());
    }
    let pool = pool_arg(size);
    let mut args = vec!["--pool", pool.as_str()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_with(&args);
    wait_pool_ready(&daemon, size)?;
    Ok(daemon)
}

/// Waits until the memfd pool of `size` has every file ready
/// (`gmemctl status --json`: `pools[].ready == count`), bounded by a
/// generous time to populate `size` (1 s per GiB at the slowest seen, ten
/// times over, and 30 s more).
///
/// # Errors
/// No such pool, or the timeout, with the last pool entry seen.
pub fn wait_pool_ready(daemon: &Daemon, size: u64) -> Result<(), String> {
    let timeout = Duration::from_secs(30 + 10 * (size >> 30));
    let deadline = Instant::now() + timeout;
    loop {
        let pool = pool(daemon, size)?;
        let (ready, count) = (&pool["ready"], &pool["count"]);
        if ready.as_u64().is_some() && ready == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the pool did not fill within {timeout:?}: {pool}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `pools` entry of `gmemctl status --json` for memfds of `size`.
///
/// # Errors
/// gmemctl's failure, or no such pool.
pub fn pool(daemon: &Daemon, size: u64) -> Result<Value, String> {
    let status = status(daemon)?;
    status["pools"]
        .as_array()
        .and_then(|pools| {
            pools
                .iter()
                .find(|p| p["size"] == size && p["kind"] == "memfd")
        })
        .cloned()
        .ok_or_else(|| {
            format!(
                "no memfd pool of {size} bytes in gmemctl status: {}",
                status["pools"]
            )
        })
}

/// `gmemctl status --json`.
///
/// # Errors
/// gmemctl's failure or output that is not JSON.
pub fn status(daemon: &Daemon) -> Result<Value, String> {
    let mut cmd = daemon.gmemctl();
    cmd.args(["status", "--json"]);
    let out = process::run_ok("gmemctl status", cmd, Duration::from_secs(30))?;
    serde_json::from_str(&out).map_err(|e| format!("gmemctl status --json: {e}"))
}

/// gmemd's resident memory in KiB.
pub fn rss_kib(daemon: &Daemon) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// gmemd's log lines that contain `needle`.
pub fn log_lines(daemon: &Daemon, needle: &str) -> Vec<String> {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Whether gmemd's log says the CREATE of file `name` took a pool file
/// (`created … (SIZE, from the pool)`, logged at info); `None` if the log
/// does not mention its creation (a lower log level).
pub fn created_from_pool(daemon: &Daemon, name: &str) -> Option<bool> {
    let created: Vec<String> = log_lines(daemon, "created ")
        .into_iter()
        .filter(|l| l.contains(name))
        .collect();
    (!created.is_empty()).then(|| created.iter().any(|l| l.contains("from the pool")))
}

/// A note unless gmemd's log shows every run's CREATE took the pool's file.
pub fn pool_note(what: &str, taken: &[Option<bool>]) -> Option<String> {
    let missed = taken.iter().filter(|t| **t == Some(false)).count();
    let unknown = taken.iter().filter(|t| t.is_none()).count();
    if missed > 0 {
        Some(format!(
            "{what} did not take the pool's file in {missed} of {} runs: those ran on fresh memory",
            taken.len()
        ))
    } else if unknown > 0 {
        Some(format!(
            "whether {what} took the pool's file is unknown in {unknown} of {} runs (gmemd logs it at info)",
            taken.len()
        ))
    } else {
        None
    }
}
