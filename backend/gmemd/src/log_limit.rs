//! Rate-limited logging: a line a hostile client can make gmemd repeat
//! (refusals, connections turned away, accept failures) is written at most
//! [`BURST`] times per [`WINDOW`] for each key, then once more with the
//! count of what was left out. The log stays bounded under any flood.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines per key per window.
pub const BURST: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Keys remembered; beyond, the oldest windows are dropped.
const MAX_KEYS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Decides which repeated lines are written.
#[derive(Debug, Default)]
pub struct LogLimiter {
    windows: HashMap<String, Window>,
}

impl LogLimiter {
    /// A limiter with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a line under `key` may be written now; `Some(n)` says so and
    /// how many were left out since the last one written.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.windows.len() >= MAX_KEYS && !self.windows.contains_key(key) {
            self.windows
                .retain(|_, w| now.duration_since(w.start) < WINDOW);
            if self.windows.len() >= MAX_KEYS {
                return None;
            }
        }
        let w = self.windows.entry(key.to_owned()).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.written = 0;
        }
        if w.written < BURST {
            w.written += 1;
            let left_out = std::mem::take(&mut w.suppressed);
            Some(left_out)
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Logs at `level` through `limiter` under `key`, noting left-out lines.
#[macro_export]
macro_rules! log_limited {
    ($limiter:expr, $key:expr, $level:expr, $($arg:tt)+) => {
        if let Some(left_out) = $limiter.allow(&$key, std::time::Instant::now()) {
            if left_out > 0 {
                log::log!($level, "{} ({left_out} similar line(s) left out)", format_args!($($arg)+));
            } else {
                log::log!($level, $($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_burst_per_window_and_counts_the_rest() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| l.allow("k", t0).is_some()).count();
        assert_eq!(written, BURST as usize);
        // Another key is not held back by the first.
        assert_eq!(l.allow("other", t0), Some(0));
        // The next window's first line says how many were left out.
        assert_eq!(l.allow("k", t0 + WINDOW), Some(1000 - u64::from(BURST)));
        assert_eq!(l.allow("k", t0 + WINDOW), Some(0));
    }

    #[test]
    fn keys_are_bounded() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            l.allow(&i.to_string(), t0);
        }
        assert!(l.windows.len() <= MAX_KEYS);
    }
}
