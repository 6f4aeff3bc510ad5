//! Launch rows: the time to a running QEMU whose SIZE of RAM is populated.
//!
//! gmemd: `gmemctl launch --vm NAME --memory SIZE -- qemu …` against a gmemd
//! started with `--pool SIZE:memfdx1`, whose one prefaulted file the
//! launch's CREATE takes; the pool is full (`ready == count` in `gmemctl
//! status --json`) before each timed run. Baselines: the same QEMU command
//! line without gmemd, RAM a `memory-backend-memfd` with `prealloc=on`,
//! and without prealloc (unpopulated, for scale). All SeaBIOS only, no
//! disk, under KVM (TCG where KVM does not start), timed from the spawn
//! until QMP `query-status` says `running`.
//!
//! Target: the pool at least 15x faster than QEMU's `prealloc=on`.

use std::time::Duration;

use gmem_tests::{median, vm_file, Daemon};
use gmemd::size::format_size;

use crate::args::Options;
use crate::daemon::{
    chain, created_from_pool, pool_note, session, start_with_pool, wait_pool_ready,
};
use crate::qemu::{self, common_args, Prealloc, Running, Scratch};
use crate::rate::ms;
use crate::report::{millis, Figure, GroupReport, Row, Table, Target};

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let size = options.size;
    let daemon = start_with_pool(size, &[]);
    let (mut pooled, mut prealloc, mut bare) = (Ok(Vec::new()), Ok(Vec::new()), Ok(Vec::new()));
    let mut taken = Vec::new();
    for round in 0..options.rounds {
        match &daemon {
            Ok(daemon) => record(
                &mut pooled,
                gmemctl_launch(daemon, size, round).map(|(t, from_pool)| {
                    taken.push(from_pool);
                    t
                }),
            ),
            Err(e) => pooled = Err(e.clone()),
        }
        record(&mut prealloc, qemu_alone(size, Prealloc::On));
        record(&mut bare, qemu_alone(size, Prealloc::Off));
    }
    let [pooled, prealloc, bare] = [pooled, prealloc, bare].map(|t| t.map(median));
    let size_text = format_size(size);
    report.rows.push(Row {
        measurement: format!(
            "launch {size_text}: gmemctl launch from a warm pool to running (vs QEMU prealloc=on)"
        ),
        gmemd: pooled.clone().map(Figure::Millis),
        baseline: prealloc.clone().map(Figure::Millis),
        target: Some(Target::AtMost(1.0 / 15.0)),
    });
    let mut details = Table::new(
        &format!(
            "start to running, {size_text} of RAM, medians of {} interleaved runs",
            options.rounds
        ),
        &["QEMU started by", "RAM", "time"],
    );
    for (by, ram, time) in [
        ("gmemctl launch", "gmemd file from the warm pool", &pooled),
        ("itself", "memory-backend-memfd, prealloc=on", &prealloc),
        ("itself", "memory-backend-memfd, not populated", &bare),
    ] {
        let cell = time.as_ref().map_or_else(
            |e| format!("n/a ({})", crate::report::one_line(e)),
            |t| format!("{} ms", millis(*t)),
        );
        details.push(vec![by.to_owned(), ram.to_owned(), cell]);
    }
    report.details.push(details);
    if let Ok(info) = qemu::info() {
        report
            .notes
            .push(format!("QEMU {}, -accel {}", info.version, info.accel));
    }
    report.notes.extend(pool_note("gmemctl launch", &taken));
    report
}

/// Adds a sample, or keeps the first error.
fn record(samples: &mut Result<Vec<f64>, String>, result: Result<Duration, String>) {
    if let Ok(done) = samples {
        match result {
            Ok(t) => done.push(ms(t)),
            Err(e) => *samples = Err(e),
        }
    }
}

/// One `gmemctl launch` of a new VM with the pool full: the time to
/// running, and whether the pool gave its file (if gmemd's log says). QEMU quits, the VM's file
/// is destroyed and the pool refills before this returns.
fn gmemctl_launch(
    daemon: &Daemon,
    size: u64,
    round: usize,
) -> Result<(Duration, Option<bool>), String> {
    wait_pool_ready(daemon, size)?;
    let info = qemu::info()?;
    let vm_name = format!("launch-{round}");
    let dir = Scratch::new()?;
    let mut cmd = daemon.gmemctl();
    cmd.args([
        "launch",
        "--vm",
        &vm_name,
        "--memory",
        &format!("{}M", size >> 20),
        "--",
    ])
    .arg(&info.program)
    .args(["-accel", info.accel, "-readconfig"])
    .arg(gmem_tests::qemu::qemu_config("q35-gmemd.cfg"))
    .args(common_args(&dir.qmp()))
    .env("RUST_LOG", "info");
    let (mut running, _) = Running::start("gmemctl launch", cmd, dir, qemu::qmp_timeout(size))?;
    running.wait_running()?;
    let elapsed = running.started_at().elapsed();
    let from_pool = created_from_pool(daemon, &format!("{vm_name}.ram"));
    running.quit()?;
    destroy_vm_ram(daemon, &vm_name)?;
    Ok((elapsed, from_pool))
}

/// Destroys the RAM file `gmemctl launch` made for `vm_name`, once its
/// lease has ended (QEMU exited), so memory does not pile up over rounds.
fn destroy_vm_ram(daemon: &Daemon, vm_name: &str) -> Result<(), String> {
    let file = vm_file(vm_name, &format!("{vm_name}.ram"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut control = session(&daemon.socket(), None)?;
    loop {
        match control.destroy_in(&file) {
            Ok(()) => return Ok(()),
            // Still bound while the lease ends (EBUSY): try again.
            Err(e) if std::time::Instant::now() < deadline && e.errno() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("destroying {vm_name}'s RAM: {}", chain(&e))),
        }
    }
}

/// QEMU alone, RAM a memfd backend populated as `prealloc` says: the time
/// from its spawn until it runs.
fn qemu_alone(size: u64, prealloc: Prealloc) -> Result<Duration, String> {
    let (mut running, _) = qemu::start_memfd(size, prealloc, false)?;
    running.wait_running()?;
    let elapsed = running.started_at().elapsed();
    running.quit()?;
    Ok(elapsed)
}
