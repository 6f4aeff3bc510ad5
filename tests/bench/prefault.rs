//! Prefault rows: populating SIZE bytes of guest RAM ahead of use.
//!
//! gmemd: N parallel `gmemctl create NAME --size SIZE/N --prefault`
//! (N = cores), and one with the whole SIZE, timed from the first spawn
//! until the last exits (`--prefault` waits until gmemd reports the file
//! populated). The operators' files are destroyed after each run.
//!
//! Baselines in the same run and process, each on fresh memory freed
//! before the next (`raw_fill`): `fallocate` of one memfd by 1 and by N
//! threads and of N memfds by N threads (the fastest of these three is
//! "the best raw layout"), `MADV_POPULATE_WRITE`, a `memset` of anonymous
//! memory; and QEMU's own `memory-backend-memfd` with `prealloc=on` and
//! `prealloc-threads=N`, timed from its start until QMP answers.
//!
//! Targets: gmemd at least 1.5x faster than QEMU's better prealloc
//! setting, and within 1.2x of the best raw layout.

use std::io::{Read, Seek};
use std::process::Command;
use std::time::{Duration, Instant};

use gmem_tests::{median, Daemon};
use gmemd::size::format_size;

use crate::args::Options;
use crate::daemon::supports;
use crate::process::{run_ok, spawn, wait_all};
use crate::qemu::{self, Prealloc};
use crate::rate::ms;
use crate::raw_fill::RawFill;
use crate::report::{millis, ratio_text, Figure, GroupReport, Row, Table, Target};

/// One way of populating SIZE, measured every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `parts` parallel `gmemctl create --prefault` of SIZE/parts each.
    Gmemd {
        parts: usize,
    },
    Raw(RawFill),
    Qemu(Prealloc),
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::Gmemd { parts: 1 } => "gmemd: 1 × gmemctl create --prefault".to_owned(),
            Method::Gmemd { parts } => {
                format!("gmemd: {parts} parallel gmemctl create --prefault of SIZE/{parts}")
            }
            Method::Raw(raw) => format!("raw: {}", raw.label()),
            Method::Qemu(prealloc) => format!("QEMU memory-backend-memfd {}", prealloc.label()),
        }
    }
}

/// The milliseconds of each run of a method, or why it could not run.
type Times = Result<Vec<f64>, String>;

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let size = options.size;
    let cores = cores();
    let mut methods = vec![Method::Gmemd { parts: cores }];
    if cores > 1 {
        methods.push(Method::Gmemd { parts: 1 });
    }
    methods.extend([
        Method::Raw(RawFill::OneMemfd { threads: 1 }),
        Method::Raw(RawFill::OneMemfd { threads: cores }),
        Method::Raw(RawFill::Memfds { threads: cores }),
        Method::Raw(RawFill::PopulateWrite),
        Method::Raw(RawFill::MemsetAnonymous),
        Method::Qemu(Prealloc::On),
        Method::Qemu(Prealloc::Threads(cores)),
    ]);
    methods.dedup();
    let daemon = prefault_daemon();
    let mut times: Vec<(Method, Times)> = methods.iter().map(|m| (*m, Ok(Vec::new()))).collect();
    // Interleaved: every method once per round, so a busy moment of the
    // machine hits all of them.
    for round in 0..options.rounds {
        for (method, samples) in &mut times {
            let Ok(done) = samples else { continue };
            let result = match (*method, &daemon) {
                (Method::Gmemd { .. }, Err(e)) => Err(e.clone()),
                (Method::Gmemd { parts }, Ok(daemon)) => gmemd_prefault(daemon, size, parts, round),
                (Method::Raw(raw), _) => raw.run(size),
                (Method::Qemu(prealloc), _) => qemu_prealloc(size, prealloc),
            };
            match result {
                Ok(elapsed) => done.push(ms(elapsed)),
                Err(e) => *samples = Err(e),
            }
        }
    }
    let medians: Vec<(Method, Result<f64, String>)> =
        times.into_iter().map(|(m, t)| (m, t.map(median))).collect();
    let of = |want: Method| {
        medians
            .iter()
            .find(|(m, _)| *m == want)
            .map_or_else(|| Err("not measured".to_owned()), |(_, t)| t.clone())
    };
    // The fastest measured method that `keep` selects.
    let best = |keep: &dyn Fn(Method) -> bool| {
        medians
            .iter()
            .filter_map(|(m, t)| Some((*m, *t.as_ref().ok()?)))
            .filter(|(m, _)| keep(*m))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let gmemd = of(Method::Gmemd { parts: cores });
    let size_text = format_size(size);
    let (qemu_best, qemu_label) = match best(&|m| matches!(m, Method::Qemu(_))) {
        Some((m, t)) => (Ok(t), m.label()),
        None => (of(Method::Qemu(Prealloc::On)), "QEMU prealloc".to_owned()),
    };
    report.rows.push(Row {
        measurement: format!(
            "prefault {size_text}: {cores} parallel gmemctl create --prefault (vs best QEMU: {qemu_label})"
        ),
        gmemd: gmemd.clone().map(Figure::Millis),
        baseline: qemu_best.map(Figure::Millis),
        target: Some(Target::AtMost(1.0 / 1.5)),
    });
    let (raw_best, raw_label) = match best(&|m| matches!(m, Method::Raw(r) if r.is_fallocate())) {
        Some((m, t)) => (Ok(t), m.label()),
        None => (
            of(Method::Raw(RawFill::OneMemfd { threads: 1 })),
            "raw fallocate".to_owned(),
        ),
    };
    report.rows.push(Row {
        measurement: format!(
            "prefault {size_text}: {cores} parallel gmemctl create --prefault (vs best raw layout: {raw_label})"
        ),
        gmemd: gmemd.clone().map(Figure::Millis),
        baseline: raw_best.clone().map(Figure::Millis),
        target: Some(Target::AtMost(1.2)),
    });
    let mut details = Table::new(
        &format!(
            "populating {size_text}, medians of {} interleaved runs",
            options.rounds
        ),
        &["method", "time", "GiB/s", "vs best raw fallocate"],
    );
    for (method, time) in &medians {
        let (time_cell, rate, vs) = match time {
            Ok(t) => (
                format!("{} ms", millis(*t)),
                format!("{:.2}", size as f64 / (1u64 << 30) as f64 / (t / 1000.0)),
                raw_best
                    .as_ref()
                    .map_or_else(|_| "n/a".to_owned(), |b| format!("{}x", ratio_text(t / b))),
            ),
            Err(e) => (
                format!("n/a ({})", crate::report::one_line(e)),
                String::new(),
                String::new(),
            ),
        };
        details.push(vec![method.label(), time_cell, rate, vs]);
    }
    report.details.push(details);
    report.notes.push(format!(
        "N = {cores} (available parallelism); memset writes every byte (ptr::write_bytes); \
         transparent huge pages: anonymous {}, shmem {}",
        thp("enabled"),
        thp("shmem_enabled")
    ));
    report
}

/// The cores this process may use (N of the parallel rows).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The selected value of a transparent huge page setting (`[always]`).
fn thp(setting: &str) -> String {
    std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{setting}"))
        .ok()
        .and_then(|s| {
            let start = s.find('[')? + 1;
            let end = s[start..].find(']')? + start;
            Some(s[start..end].to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// A gmemd for the gmemd rows, or why there is none.
fn prefault_daemon() -> Result<Daemon, String> {
    if !supports("gmemctl", Some("create"), "--prefault") {
        return Err("gmemctl create has no --prefault yet".to_owned());
    }
    Ok(Daemon::start())
}

/// `parts` parallel `gmemctl create --prefault`, SIZE/`parts` each (whole
/// MiB); the files are destroyed afterwards, outside the time.
fn gmemd_prefault(
    daemon: &Daemon,
    size: u64,
    parts: usize,
    round: usize,
) -> Result<Duration, String> {
    let each = (size / parts as u64) >> 20 << 20;
    let names: Vec<String> = (0..parts)
        .map(|i| format!("prefault-{round}-{parts}-{i}"))
        .collect();
    let timeout = qemu::qmp_timeout(size);
    let started = Instant::now();
    let mut children = Vec::with_capacity(parts);
    let mut logs = Vec::with_capacity(parts);
    for name in &names {
        let log = tempfile::tempfile().map_err(|e| format!("temporary file: {e}"))?;
        let mut cmd = daemon.gmemctl();
        cmd.args([
            "create",
            name,
            "--prefault",
            "--size",
            &format!("{}M", each >> 20),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log.try_clone().map_err(|e| format!("dup: {e}"))?);
        children.push(spawn("gmemctl create --prefault", cmd)?);
        logs.push(log);
    }
    let statuses = wait_all(&mut children, timeout);
    let elapsed = started.elapsed();
    let destroyed = destroy(daemon, &names);
    for (status, mut log) in statuses?.iter().zip(logs) {
        if !status.success() {
            let mut text = String::new();
            let _ = log.rewind().and_then(|()| log.read_to_string(&mut text));
            return Err(format!(
                "gmemctl create --prefault: {status}: {}",
                text.trim()
            ));
        }
    }
    destroyed?;
    Ok(elapsed)
}

/// Destroys the operators' files `names` (those that exist).
fn destroy(daemon: &Daemon, names: &[String]) -> Result<(), String> {
    for name in names {
        let mut cmd: Command = daemon.gmemctl();
        cmd.args(["destroy", name]);
        if let Err(e) = run_ok("gmemctl destroy", cmd, Duration::from_secs(30)) {
            if !e.contains("ENOENT") {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// QEMU with a memfd backend of `size` preallocated, from its start until
/// QMP answers; it quits before this returns.
fn qemu_prealloc(size: u64, prealloc: Prealloc) -> Result<Duration, String> {
    let (running, to_qmp) = qemu::start_memfd(size, prealloc, true)?;
    running.quit()?;
    Ok(to_qmp)
}
