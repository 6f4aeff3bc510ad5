//! gmemd's log output, written by a thread of its own: a log line costs the
//! request path a copy into a buffer instead of a `write` to stderr.
//!
//! The daemon logs every lease, bind, unbind and refusal; at info level
//! that was one `write` system call per request, as many as the request
//! itself needs to be read. Here the lines collect in memory and a writer
//! thread sends them out every [`FLUSH_EVERY`]. What is lost when gmemd is
//! killed with SIGKILL is at most that much of the log (the ledger itself
//! is journaled before each reply, independently of the log). Everything
//! buffered is written before gmemd exits or execs itself
//! ([`LogPipe::flush_now`]) and when it panics.
//!
//! The buffer is bounded: past [`MAX_BUFFERED`] the line that finds it full
//! writes everything out itself, as an unbuffered logger would, so a stuck
//! stderr slows gmemd down instead of growing it.
//!
//! Written here rather than taken from a crate: the logging crates on the
//! registry that write from a thread (e.g. `log4rs`'s async appenders,
//! `slog-async`) replace `env_logger` and its `RUST_LOG` syntax, which the
//! operators and tests rely on; this keeps `env_logger`'s formatting and
//! filtering and only moves the write.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often the writer thread sends buffered lines out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Bytes buffered at most before a logging thread writes them itself.
pub const MAX_BUFFERED: usize = 1 << 20;

/// The buffer shared by the logger and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    lines: Mutex<Vec<u8>>,
}

impl Shared {
    /// Writes out everything buffered, in order: the lock is held while
    /// writing so that no line can overtake another.
    fn drain_to(&self, out: &mut impl Write) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return;
        }
        // A failing stderr cannot be reported anywhere: the lines go.
        let _ = out.write_all(&lines);
        let _ = out.flush();
        lines.clear();
    }
}

/// The writer env_logger is given: appends to the shared buffer.
#[derive(Debug, Clone)]
pub struct LogPipe {
    shared: Arc<Shared>,
}

static PIPE: OnceLock<LogPipe> = OnceLock::new();

impl LogPipe {
    /// The process's pipe, with its writer thread started on first use.
    ///
    /// # Panics
    /// If the writer thread cannot be started.
    pub fn global() -> LogPipe {
        PIPE.get_or_init(|| {
            let pipe = LogPipe {
                shared: Arc::new(Shared::default()),
            };
            let shared = Arc::clone(&pipe.shared);
            // Started before the event loop takes SIGTERM through a
            // signalfd: this thread must never receive it.
            let builder = std::thread::Builder::new().name("gmemd-log".into());
            crate::signals::spawn_without_signals(builder, move || loop {
                std::thread::sleep(FLUSH_EVERY);
                shared.drain_to(&mut io::stderr().lock());
            })
            .expect("start the log writer thread");
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                LogPipe::flush_now();
                previous(info);
            }));
            pipe
        })
        .clone()
    }

    /// Writes out every buffered line now (before exit or exec).
    pub fn flush_now() {
        if let Some(pipe) = PIPE.get() {
            pipe.shared.drain_to(&mut io::stderr().lock());
        }
    }
}

impl Write for LogPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut lines = self.shared.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.extend_from_slice(buf);
        if lines.len() >= MAX_BUFFERED {
            drop(lines);
            self.shared.drain_to(&mut io::stderr().lock());
        }
        Ok(buf.len())
    }

    /// The writer thread flushes; a line must not cost a system call.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let shared = Shared::default();
        let mut pipe = LogPipe {
            shared: Arc::new(shared),
        };
        for i in 0..100 {
            writeln!(pipe, "line {i}").unwrap();
        }
        let mut out = Vec::new();
        pipe.shared.drain_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        // Drained means gone: nothing is written twice.
        let mut again = Vec::new();
        pipe.shared.drain_to(&mut again);
        assert!(again.is_empty());
    }
}
