//! A small blocking QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! Used by `gmemctl launch/upgrade/hotplug` to drive QEMU: pass file
//! descriptors (`add-fd`, `getfd`) as `SCM_RIGHTS`, hot-plug memory, and run
//! live migrations (`x-ignore-shared`) between two QEMUs that map the same
//! gmemd-owned RAM.
//!
//! Every read and write is bounded by a deadline; the client never blocks
//! forever. Asynchronous events received while waiting for a reply are kept in
//! a small queue, see [`QmpClient::take_events`] and [`QmpClient::wait_event`].
//!
//! ```no_run
//! # use std::time::Duration;
//! # use gmemctl::qmp::QmpClient;
//! let mut qmp = QmpClient::connect("/run/vm0/qmp.sock", Duration::from_secs(5))?;
//! assert_eq!(qmp.query_status()?, "running");
//! # Ok::<(), gmemctl::qmp::QmpError>(())
//! ```

mod client;
mod commands;
mod message;
#[cfg(test)]
mod tests;
mod types;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use client::QmpClient;
pub use types::*;

/// At most this many unread events are kept; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 256;
/// A single QMP message longer than this is treated as a protocol error.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Interval between connection attempts while the socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// First and maximum interval between `query-migrate` polls.
const MIGRATION_POLL_MIN: Duration = Duration::from_millis(2);
const MIGRATION_POLL_MAX: Duration = Duration::from_millis(20);

/// Errors from the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket could not be connected to (within the connect timeout).
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last error from `connect(2)`.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the socket failed.
    #[error("QMP socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// QEMU sent something that is not valid JSON.
    #[error("invalid JSON from QEMU ({line:?}): {source}")]
    Json {
        /// The offending line (possibly truncated).
        line: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The first message was not a QMP greeting.
    #[error("bad QMP greeting: {0}")]
    Greeting(String),
    /// QEMU answered a command with an `error` reply.
    #[error("QMP command {command:?} failed: {class}: {desc}")]
    Command {
        /// Command that failed.
        command: String,
        /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// Human-readable description from QEMU.
        desc: String,
    },
    /// No answer within the deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// QEMU closed the connection.
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// A well-formed JSON message that does not fit the protocol or the
    /// expected reply shape.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// `wait_migration` saw the migration end in `failed` or `cancelled`.
    #[error("migration {status}{}", desc.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    MigrationFailed {
        /// Final migration status.
        status: MigrationStatus,
        /// `error-desc` reported by QEMU, if any.
        desc: Option<String>,
    },
}

/// Cuts long text for error messages.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 512;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
