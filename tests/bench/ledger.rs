//! Ledger rows: the BIND+UNBIND rate of clients against a gmemd holding
//! 10,000 files and 1,000 leases, beside the same daemon holding 1 file
//! and 1 lease. A lookup that grew with the ledger would show here.
//!
//! Each lease is a connection that did HELLO for a VM of its own, its
//! files spread evenly over the leases (10 each), 4 KiB memfds. Both
//! daemons get the same raised limits; the bench raised its own
//! RLIMIT_NOFILE (`setup`), and gmemd raises its own and lowers
//! `--max-files` and `--max-connections` to fit it, which it logs (quoted
//! in the notes if it did).

use std::time::{Duration, Instant};

use gmem_protocol::wire::MemoryKind;
use gmem_protocol::Client;
use gmem_tests::{median, name, vm, Daemon};

use crate::args::Options;
use crate::daemon::{chain, log_lines, rss_kib, session};
use crate::report::{thousands, Figure, GroupReport, Row, Table, Target};
use crate::requests::gmemd_rate;

/// Clients of the rate measurement.
const CLIENTS: usize = 8;

/// Files and leases of the full ledger.
#[derive(Debug, Clone, Copy)]
struct Population {
    files: usize,
    leases: usize,
}

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let full = if options.smoke {
        Population {
            files: 500,
            leases: 50,
        }
    } else {
        Population {
            files: 10_000,
            leases: 1_000,
        }
    };
    let pairs = if options.smoke { 200 } else { 2_000 };
    let files = (full.files + 1_000).to_string();
    let connections = (full.leases + CLIENTS + 100).to_string();
    let args = [
        "--max-files",
        &files,
        "--quota-files",
        &files,
        "--max-connections",
        &connections,
        "--quota-connections",
        &connections,
    ];
    let small = Daemon::start_with(&args);
    let big = Daemon::start_with(&args);
    let small_leases = populate(
        &small,
        Population {
            files: 1,
            leases: 1,
        },
    );
    let started = Instant::now();
    let big_leases = populate(&big, full);
    let populated_in = started.elapsed();
    let (small_leases, big_leases) = match (small_leases, big_leases) {
        (Ok(s), Ok(b)) => (s, b),
        (Err(e), _) | (_, Err(e)) => {
            report.rows.push(row(full, Err(e.clone()), Err(e)));
            return report;
        }
    };
    let (mut s, mut b) = (Vec::new(), Vec::new());
    let mut error = None;
    for _ in 0..options.rounds {
        match (
            gmemd_rate(&small.socket(), CLIENTS, pairs),
            gmemd_rate(&big.socket(), CLIENTS, pairs),
        ) {
            (Ok(small), Ok(big)) => {
                s.push(small);
                b.push(big);
            }
            (Err(e), _) | (_, Err(e)) => {
                error = Some(e);
                break;
            }
        }
    }
    let measured = |xs: Vec<f64>| match &error {
        Some(e) => Err(e.clone()),
        None => Ok(median(xs)),
    };
    let (s, b) = (measured(s), measured(b));
    let mut details = Table::new(
        &format!("{CLIENTS} clients, BIND+UNBIND, medians"),
        &["gmemd holding", "requests/s", "gmemd RSS", "set up in"],
    );
    let kib = |d: &Daemon| {
        rss_kib(d).map_or_else(
            || "?".to_owned(),
            |k| format!("{} KiB", thousands(k as f64)),
        )
    };
    let full_label = format!(
        "{} files, {} leases",
        thousands(full.files as f64),
        thousands(full.leases as f64)
    );
    for (label, rate, daemon, setup) in [
        ("1 file, 1 lease", &s, &small, None),
        (full_label.as_str(), &b, &big, Some(populated_in)),
    ] {
        details.push(vec![
            label.to_owned(),
            rate.as_ref()
                .map_or_else(|e| format!("n/a ({e})"), |r| thousands(*r)),
            kib(daemon),
            setup.map_or_else(|| "–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        ]);
    }
    report.details.push(details);
    for daemon in [&small, &big] {
        for line in log_lines(daemon, "RLIMIT_NOFILE") {
            report.notes.push(format!("gmemd says: {}", line.trim()));
        }
    }
    report.rows.push(row(full, b, s));
    drop((small_leases, big_leases));
    report
}

fn row(full: Population, big: Result<f64, String>, small: Result<f64, String>) -> Row {
    Row {
        measurement: format!(
            "ledger: BIND+UNBIND rate, {CLIENTS} clients, {} files + {} leases held (vs 1 file, 1 lease)",
            thousands(full.files as f64),
            thousands(full.leases as f64)
        ),
        gmemd: big.map(Figure::PerSecond),
        baseline: small.map(Figure::PerSecond),
        target: Some(Target::AtLeast(0.9)),
    }
}

/// Opens `leases` leases and creates `files` 4 KiB files spread over them;
/// returns the leases, which hold their VMs' files' owners until dropped.
///
/// # Errors
/// A refused connection or CREATE, naming which.
fn populate(daemon: &Daemon, p: Population) -> Result<Vec<Client>, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let per_lease = p.files.div_ceil(p.leases);
    let mut held = Vec::with_capacity(p.leases);
    let mut created = 0;
    for i in 0..p.leases {
        let mut client = session(&daemon.socket(), Some(vm(&format!("ledger-{i}"))))
            .map_err(|e| format!("lease {i} of {}: {e}", p.leases))?;
        for f in 0..per_lease.min(p.files - created) {
            client
                .create(&name(&format!("f{f}")), 4096, MemoryKind::Memfd)
                .map_err(|e| format!("file {created} of {}: {}", p.files, chain(&e)))?;
            created += 1;
        }
        held.push(client);
        if Instant::now() > deadline {
            return Err(format!("populating took over 300 s ({i} leases)"));
        }
    }
    Ok(held)
}
