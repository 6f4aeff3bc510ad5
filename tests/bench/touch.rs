//! Touch rows: what a guest pays on first touch of its RAM. A lease
//! CREATEs a SIZE memfd, maps it `MAP_SHARED` as a VMM does and writes one
//! byte in every 4 KiB page, timed; once on a gmemd whose `--pool
//! SIZE:memfdx1` is full (the CREATE takes the pool's populated file) and
//! once on a gmemd without a pool (fresh memory, every touch a page fault
//! that allocates and clears a page). The file is destroyed after each run
//! and the pool refilled before the next.
//!
//! No target: the figures say what the pool saves a guest.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use gmem_protocol::wire::MemoryKind;
use gmem_tests::{median, name, vm, Daemon};
use gmemd::size::format_size;

use crate::args::Options;
use crate::daemon::{
    chain, created_from_pool, pool_note, session, start_with_pool, wait_pool_ready,
};
use crate::mapping::Mapping;
use crate::rate::ms;
use crate::report::{millis, Figure, GroupReport, Row, Table};

/// One run's times.
#[derive(Debug, Clone, Copy)]
struct Touch {
    create: Duration,
    touch: Duration,
}

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let size = options.size;
    let pooled = start_with_pool(size, &[]);
    let fresh = Daemon::start();
    let (mut from_pool, mut from_fresh) = (Ok(Vec::new()), Ok(Vec::new()));
    let mut taken = Vec::new();
    for round in 0..options.rounds {
        if let Ok(done) = &mut from_pool {
            let run = pooled.as_ref().map_err(Clone::clone).and_then(|d| {
                wait_pool_ready(d, size)?;
                let t = touch(d, size, round)?;
                taken.push(created_from_pool(d, &file_name(round)));
                Ok(t)
            });
            match run {
                Ok(t) => done.push(t),
                Err(e) => from_pool = Err(e),
            }
        }
        if let Ok(done) = &mut from_fresh {
            match touch(&fresh, size, round) {
                Ok(t) => done.push(t),
                Err(e) => from_fresh = Err(e),
            }
        }
    }
    let medians = |runs: &Result<Vec<Touch>, String>| {
        runs.as_ref().map_err(Clone::clone).map(|runs| {
            (
                median(runs.iter().map(|t| ms(t.create)).collect()),
                median(runs.iter().map(|t| ms(t.touch)).collect()),
            )
        })
    };
    let (pool_ms, fresh_ms) = (medians(&from_pool), medians(&from_fresh));
    let size_text = format_size(size);
    report.rows.push(Row {
        measurement: format!(
            "touch {size_text}: one write per 4 KiB page of a CREATEd memfd, from a warm pool (vs fresh memory)"
        ),
        gmemd: pool_ms.clone().map(|(_, t)| Figure::Millis(t)),
        baseline: fresh_ms.clone().map(|(_, t)| Figure::Millis(t)),
        target: None,
    });
    let mut details = Table::new(
        &format!(
            "a lease's {size_text} memfd, medians of {} interleaved runs",
            options.rounds
        ),
        &["memory", "CREATE", "first touch of every page", "per page"],
    );
    let pages = (size / crate::mapping::PAGE as u64) as f64;
    for (label, figures) in [("warm pool", &pool_ms), ("fresh", &fresh_ms)] {
        details.push(match figures {
            Ok((create, touch)) => vec![
                label.to_owned(),
                format!("{} ms", millis(*create)),
                format!("{} ms", millis(*touch)),
                format!("{:.2} µs", touch * 1000.0 / pages),
            ],
            Err(e) => vec![
                label.to_owned(),
                format!("n/a ({})", crate::report::one_line(e)),
                String::new(),
                String::new(),
            ],
        });
    }
    report.details.push(details);
    report.notes.extend(pool_note("the touch's CREATE", &taken));
    report
}

/// The file a round CREATEs.
fn file_name(round: usize) -> String {
    format!("touch-{round}-ram")
}

/// A lease CREATEs a `size` memfd and writes one byte per page of it; the
/// file is destroyed afterwards (outside the times).
fn touch(daemon: &Daemon, size: u64, round: usize) -> Result<Touch, String> {
    let len = usize::try_from(size).map_err(|_| format!("{size} bytes do not fit in memory"))?;
    let vm_name = format!("touch-{round}");
    let file = name(&file_name(round));
    let mut lease = session(&daemon.socket(), Some(vm(&vm_name)))?;
    let started = Instant::now();
    let (fd, _) = lease
        .create(&file, size, MemoryKind::Memfd)
        .map_err(|e| format!("CREATE of {size} bytes: {}", chain(&e)))?;
    let create = started.elapsed();
    let mut mapping = Mapping::shared(fd.as_fd(), len)?;
    let started = Instant::now();
    mapping.touch_pages();
    let touch = started.elapsed();
    drop(mapping);
    drop(fd);
    lease
        .destroy(&file)
        .map_err(|e| format!("DESTROY: {}", chain(&e)))?;
    Ok(Touch { create, touch })
}
