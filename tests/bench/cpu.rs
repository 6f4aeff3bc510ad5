//! CPU time of processes, to say where a request's time goes: the server's
//! share and the clients' share of the two cores.

use std::time::Duration;

/// User plus system CPU time `pid` (or `"self"`) has used, all threads.
///
/// # Errors
/// `/proc/PID/stat` unreadable or not as expected.
pub fn used(pid: &str) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| format!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory effects; _SC_CLK_TCK is always valid.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).unwrap_or(100).max(1);
    Ok(Duration::from_micros(total * 1_000_000 / per_second))
}

/// CPU time `pid` and this process used while `run` ran, with its result.
///
/// # Errors
/// `run`'s error, or reading the CPU times.
pub fn during<T>(
    pid: &str,
    run: impl FnOnce() -> Result<T, String>,
) -> Result<(T, Duration, Duration), String> {
    let (server_before, self_before) = (used(pid)?, used("self")?);
    let value = run()?;
    let server = used(pid)?.saturating_sub(server_before);
    let own = used("self")?.saturating_sub(self_before);
    Ok((value, server, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_as_cpu_time_of_this_process() {
        // Spins until 30 ms of CPU time show (however busy the machine);
        // a reading that never moves fails at the deadline.
        let began = std::time::Instant::now();
        let ((), _, own) = during("self", || {
            let start = used("self")?;
            let mut x = 0u64;
            while used("self")?.saturating_sub(start) < Duration::from_millis(30) {
                if began.elapsed() > Duration::from_secs(20) {
                    return Err("no CPU time shows after 20 s of spinning".to_owned());
                }
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(own >= Duration::from_millis(30), "{own:?}");
    }
}
