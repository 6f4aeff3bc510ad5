//! The daemon's log: env_logger's filter and format, written to stderr in
//! batches while the event loop serves.
//!
//! gmemd logs every lease, bind and unbind at info. One `write` per line
//! was a fifth of the request path's syscalls, so while the event loop
//! runs ([`hold`]), lines collect in a buffer and go out in one `write`
//! ([`flush`]) at the end of each wakeup, right after its replies, and
//! before a connection is closed. Warnings and errors go out at once, and
//! so does a buffer past [`FLUSH_AT`]. gmemd killed between a reply and
//! the end of its wakeup (microseconds) loses those info lines; the
//! journal still has every change. Outside the loop (startup, the keeper,
//! exit) every line is written as it comes.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::{Level, Log, Metadata, Record};

/// Buffered bytes that are written out without waiting for the wakeup's end.
pub const FLUSH_AT: usize = 16 << 10;

/// Lines not yet written.
static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Whether lines wait for [`flush`] (the event loop is serving).
static HOLDING: AtomicBool = AtomicBool::new(false);

/// Installs the logger: `RUST_LOG` filters (default `info`); plain text
/// (env_logger is built without styling, see the workspace manifest).
///
/// # Errors
/// A logger is already installed.
pub fn init() -> Result<(), log::SetLoggerError> {
    let env = env_logger::Env::default().default_filter_or("info");
    let inner = env_logger::Builder::from_env(env)
        .target(env_logger::Target::Pipe(Box::new(Sink)))
        .build();
    log::set_max_level(inner.filter());
    log::set_boxed_logger(Box::new(BatchedLogger { inner }))?;
    // The lines before a panic are the ones an operator needs. try_lock:
    // the panic may have struck while the buffer was held.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut buffer) = BUFFER.try_lock() {
            write_out(&mut buffer, &mut io::stderr().lock());
        }
        report(info);
    }));
    Ok(())
}

/// From now on lines wait for [`flush`] (info and below).
pub fn hold() {
    HOLDING.store(true, Ordering::Release);
}

/// Writes what waits and goes back to writing every line as it comes.
pub fn release() {
    HOLDING.store(false, Ordering::Release);
    flush();
}

/// Writes the lines that wait, in one `write`.
pub fn flush() {
    write_out(&mut lock(), &mut io::stderr().lock());
}

fn lock() -> std::sync::MutexGuard<'static, Vec<u8>> {
    // A panic while formatting a line leaves whole lines behind: usable.
    BUFFER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes one line: kept in `buffer` while `holding` (until it is full),
/// else written to `out` with what waited.
fn take_line(buffer: &mut Vec<u8>, line: &[u8], holding: bool, out: &mut impl Write) {
    buffer.extend_from_slice(line);
    if !holding || buffer.len() >= FLUSH_AT {
        write_out(buffer, out);
    }
}

fn write_out(buffer: &mut Vec<u8>, out: &mut impl Write) {
    if buffer.is_empty() {
        return;
    }
    // Nowhere to report a failed log write; the lines are dropped rather
    // than kept to grow without bound.
    let _ = out.write_all(buffer);
    buffer.clear();
}

/// env_logger's output: the buffer while holding, stderr otherwise.
struct Sink;

impl Write for Sink {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let holding = HOLDING.load(Ordering::Acquire);
        take_line(&mut lock(), line, holding, &mut io::stderr().lock());
        Ok(line.len())
    }

    /// env_logger flushes after every line; the batch is flushed by
    /// [`flush`] instead.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// env_logger, with warnings and errors written at once.
struct BatchedLogger {
    inner: env_logger::Logger,
}

impl Log for BatchedLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        self.inner.log(record);
        if record.level() <= Level::Warn {
            flush();
        }
    }

    fn flush(&self) {
        flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_wait_until_flushed_or_full() {
        let (mut buffer, mut out) = (Vec::new(), Vec::new());
        take_line(&mut buffer, b"one\n", true, &mut out);
        take_line(&mut buffer, b"two\n", true, &mut out);
        assert!(out.is_empty(), "held lines wait");
        write_out(&mut buffer, &mut out);
        assert_eq!(out, b"one\ntwo\n", "flushed together, in order");
        assert!(buffer.is_empty());
        out.clear();
        take_line(&mut buffer, &vec![b'x'; FLUSH_AT], true, &mut out);
        assert_eq!(out.len(), FLUSH_AT, "a full buffer is written at once");
    }

    #[test]
    fn lines_are_written_as_they_come_when_not_holding() {
        let (mut buffer, mut out) = (b"waited\n".to_vec(), Vec::new());
        take_line(&mut buffer, b"now\n", false, &mut out);
        assert_eq!(out, b"waited\nnow\n");
        assert!(buffer.is_empty());
    }
}
