//! gmemd itself: the line `gmemctl status` starts with, its JSON, and
//! `gmemctl restart`.
//!
//! Times come from the daemon as UNIX seconds and are shown in UTC
//! (`2026-12-01 02:58:40 UTC`), computed here without a date library.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gmem_protocol::wire::{DaemonStatus, Features};
use gmem_protocol::ClientError;
use serde_json::{json, Value};

use crate::report::format_age;
use crate::session::{Session, SessionError};

/// How long `gmemctl restart` waits at least for the new gmemd to serve.
pub const RESTART_WAIT: Duration = Duration::from_secs(10);

/// Pause between two looks at a daemon that is not back yet.
const POLL: Duration = Duration::from_millis(5);

/// Seconds since the UNIX epoch now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The proleptic Gregorian date of a day counted from 1970-01-01:
/// (year, month 1–12, day 1–31). Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, so that a leap day ends its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March year
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// UNIX seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: u64) -> String {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The first line of `gmemctl status` at time `now` (UNIX seconds):
/// since when gmemd serves, since when its state exists, the restarts it
/// survived and what it last recovered. A recovery text of several lines
/// continues on lines indented by two spaces.
pub fn daemon_line(d: &DaemonStatus, now: u64) -> String {
    let recovered = d.recovered.trim_end();
    let recovered = if recovered.is_empty() {
        "nothing to say".to_owned()
    } else {
        recovered.lines().collect::<Vec<_>>().join("\n  ")
    };
    format!(
        "gmemd pid {}, serving since {} (up {}); state since {}, {} restart(s) survived; \
         last recovery: {recovered}",
        d.pid,
        format_utc(d.started),
        format_age(now.saturating_sub(d.started)),
        format_utc(d.born),
        d.restarts,
    )
}

/// The `"daemon"` object of `gmemctl status --json`.
pub fn daemon_json(d: &DaemonStatus) -> Value {
    json!({
        "pid": d.pid,
        "restarts": d.restarts,
        "born": d.born,
        "started": d.started,
        "files": d.files,
        "leases": d.leases,
        "recovered": d.recovered,
    })
}

/// Errors of `gmemctl restart`.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// Talking to gmemd failed, or it refused.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// gmemd has RESTART but does not report its restarts (STATUS section 3).
    #[error(
        "gmemd at {} does not report its restarts, so a restart could not be seen: not asking for one",
        socket.display()
    )]
    NoDaemonStatus {
        /// The socket.
        socket: PathBuf,
    },
    /// gmemd answered RESTART but no gmemd with more restarts served in time.
    #[error(
        "gmemd at {} answered RESTART but did not serve again with more than {restarts} restart(s) within {}s",
        socket.display(),
        waited.as_secs_f64()
    )]
    NotBack {
        /// The socket.
        socket: PathBuf,
        /// The restarts gmemd had survived before.
        restarts: u32,
        /// How long gmemctl waited.
        waited: Duration,
        /// The last failure to reach it, if the last try failed.
        #[source]
        last: Option<SessionError>,
    },
}

/// What `gmemctl restart` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartReport {
    /// The daemon before the restart.
    pub before: DaemonStatus,
    /// The daemon that serves now.
    pub after: DaemonStatus,
    /// From RESTART's reply to a fresh session's answer from the new gmemd.
    pub serving_after: Duration,
}

impl RestartReport {
    /// The line `gmemctl restart` prints.
    pub fn text(&self) -> String {
        let pid = if self.before.pid == self.after.pid {
            self.after.pid.to_string()
        } else {
            format!("{} (was {})", self.after.pid, self.before.pid)
        };
        format!(
            "gmemd restarted in place: pid {pid}, restart {}, serving again after {} ms",
            self.after.restarts,
            self.serving_after.as_millis()
        )
    }
}

/// `gmemctl restart`: asks gmemd to restart in place (RESTART), then opens
/// fresh control sessions until one is answered by a gmemd that has
/// survived more restarts than before. Each connection and request is
/// bounded by `timeout`; the wait in all by the longer of `timeout` and
/// [`RESTART_WAIT`].
///
/// A RESTART lost with a gmemd that died before answering it counts as
/// asked: the wait shows whether a gmemd came back.
///
/// # Errors
/// [`RestartError`]: gmemd could not be reached, refused (`EPERM` for a
/// non-operator), lacks the feature, or did not come back in time.
pub fn restart(socket: &Path, timeout: Duration) -> Result<RestartReport, RestartError> {
    let mut session = Session::connect(socket, timeout)?;
    // Before anything is asked: an older gmemd lacks both.
    session.need_feature(Features::RESTART, "RESTART", "restart")?;
    let before = session
        .daemon_status()?
        .ok_or_else(|| RestartError::NoDaemonStatus {
            socket: socket.to_owned(),
        })?;
    match session.restart() {
        Ok(()) | Err(SessionError::Client(ClientError::Restarted { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    let asked = Instant::now();
    drop(session);
    let waited = timeout.max(RESTART_WAIT);
    loop {
        let last = match Session::connect(socket, timeout).and_then(|mut s| s.daemon_status()) {
            Ok(Some(after)) if after.restarts > before.restarts => {
                return Ok(RestartReport {
                    before,
                    after,
                    serving_after: asked.elapsed(),
                });
            }
            // The old gmemd still answering, or one that cannot say.
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if asked.elapsed() >= waited {
            return Err(RestartError::NotBack {
                socket: socket.to_owned(),
                restarts: before.restarts,
                waited,
                last,
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon() -> DaemonStatus {
        DaemonStatus {
            pid: 1234,
            restarts: 3,
            born: 1_796_086_800,    // 2026-12-01 01:00:00 UTC
            started: 1_796_093_920, // 2026-12-01 02:58:40 UTC
            files: 2,
            leases: 1,
            recovered: "2 files, 1 lease".to_owned(),
        }
    }

    #[test]
    fn utc_times_match_the_calendar() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (86_399, "1970-01-01 23:59:59 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_709_164_800, "2024-02-29 00:00:00 UTC"),
            (1_796_093_920, "2026-12-01 02:58:40 UTC"),
            // 2100 is not a leap year: Feb 28 is followed by Mar 1.
            (4_107_499_200, "2100-02-28 12:00:00 UTC"),
            (4_107_542_400, "2100-03-01 00:00:00 UTC"),
            (253_402_300_799, "9999-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(format_utc(secs), text, "{secs}");
        }
        // Any u64 formats without overflowing.
        assert!(format_utc(u64::MAX).ends_with(" UTC"));
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // Walk 1970..2400 day by day: dates advance by exactly one day.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..(430 * 366) {
            let next = civil_from_days(days);
            let (y, m, d) = prev;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let want = if d < month_len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, want, "day {days}");
            prev = next;
        }
    }

    #[test]
    fn the_daemon_line_says_since_when_and_how_often() {
        let now = 1_796_093_920 + 192;
        assert_eq!(
            daemon_line(&daemon(), now),
            "gmemd pid 1234, serving since 2026-12-01 02:58:40 UTC (up 3m12s); \
             state since 2026-12-01 01:00:00 UTC, 3 restart(s) survived; \
             last recovery: 2 files, 1 lease"
        );
        // A clock behind the daemon's: up 0s, not an underflow.
        assert!(daemon_line(&daemon(), 0).contains("(up 0s)"));
        let quiet = DaemonStatus {
            recovered: " \n".to_owned(),
            ..daemon()
        };
        assert!(daemon_line(&quiet, now).ends_with("last recovery: nothing to say"));
        let long = DaemonStatus {
            recovered: "2 files\njournal: tail cut at byte 4096\n".to_owned(),
            ..daemon()
        };
        assert!(daemon_line(&long, now)
            .ends_with("last recovery: 2 files\n  journal: tail cut at byte 4096"));
    }

    #[test]
    fn daemon_json_has_every_field() {
        let v = daemon_json(&daemon());
        assert_eq!(v["pid"], 1234);
        assert_eq!(v["restarts"], 3);
        assert_eq!(v["born"], 1_796_086_800u64);
        assert_eq!(v["started"], 1_796_093_920u64);
        assert_eq!(v["files"], 2);
        assert_eq!(v["leases"], 1);
        assert_eq!(v["recovered"], "2 files, 1 lease");
        assert_eq!(v.as_object().unwrap().len(), 7);
    }

    #[test]
    fn the_restart_report_reads_at_a_glance() {
        let report = RestartReport {
            before: daemon(),
            after: DaemonStatus {
                restarts: 4,
                ..daemon()
            },
            serving_after: Duration::from_micros(42_700),
        };
        assert_eq!(
            report.text(),
            "gmemd restarted in place: pid 1234, restart 4, serving again after 42 ms"
        );
        let moved = RestartReport {
            after: DaemonStatus {
                pid: 99,
                ..report.after.clone()
            },
            ..report
        };
        assert!(moved.text().contains("pid 99 (was 1234), restart 4"));
    }

    #[test]
    fn a_daemon_that_never_comes_back_is_named() {
        let e = RestartError::NotBack {
            socket: PathBuf::from("/run/gmemd/gmemd.sock"),
            restarts: 3,
            waited: RESTART_WAIT,
            last: None,
        };
        assert_eq!(
            e.to_string(),
            "gmemd at /run/gmemd/gmemd.sock answered RESTART but did not serve again \
             with more than 3 restart(s) within 10s"
        );
    }
}
