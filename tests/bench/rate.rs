//! Request rates: many clients started together, timed until the last is
//! done.

use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts `clients` threads with `spawn(index, start)`; each prepares,
/// waits on `start`, makes `requests` requests and returns. Returns
/// requests per second over the timed part.
///
/// A client that fails must still reach `start` (or the others would wait
/// for it forever): prepare, then wait, then return the preparation's error.
///
/// # Errors
/// The first client's error.
pub fn timed(
    clients: usize,
    requests: usize,
    spawn: impl Fn(usize, Arc<Barrier>) -> JoinHandle<Result<(), String>>,
) -> Result<f64, String> {
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients).map(|i| spawn(i, Arc::clone(&start))).collect();
    start.wait();
    let began = Instant::now();
    let mut first_error = None;
    for t in threads {
        let result = t
            .join()
            .unwrap_or_else(|_| Err("a client thread panicked".to_owned()));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    let elapsed = began.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(per_second(clients * requests, elapsed)),
    }
}

/// `count` per second of `elapsed`.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Milliseconds of `elapsed`.
pub fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}
