//! `gmemctl upgrade` of cloud-hypervisor (local migration: guest RAM handed
//! over as fds) against cloud-hypervisor's own copying migration of the
//! same VM with the same filled RAM, and the start of a PVH guest under
//! `gmemctl launch` against plain cloud-hypervisor with anonymous memory.
//!
//! ```text
//! cargo bench -p gmem-tests --bench ch_migration              # 256 MiB, 1 GiB, 4 GiB
//! cargo bench -p gmem-tests --bench ch_migration -- 512 2048  # chosen sizes (MiB)
//! ROUNDS=5 cargo bench -p gmem-tests --bench ch_migration     # rounds per size [3]
//! ```
//!
//! Each round of a size launches the PVH guest under `gmemctl launch --
//! cloud-hypervisor-pvm -v --log-file …`, fills its RAM from 16 MiB to the
//! end with non-zero data through the bench's own fd of the gmemd file, then
//!
//! - upgrades it (`gmemctl upgrade NAME --json -- cloud-hypervisor-pvm -v
//!   --log-file NEW`): cloud-hypervisor's downtime, from the log of the
//!   process that was replaced, beside gmemctl's `handoff_ms` and
//!   `elapsed_ms`;
//! - migrates it, copying, from the upgraded process to a fresh
//!   `cloud-hypervisor-pvm` that has a memfd of the same size at fd 201
//!   (`ch-remote receive-migration` there, `send-migration` without
//!   `local=on` here): cloud-hypervisor's downtime and total, from the
//!   sender's log, and the wall time from `send-migration` until the
//!   destination's `ch-remote info` says `Running`.
//!
//! cloud-hypervisor reports its migration only in its log at `-v`: "Migration
//! completed after X.Ys with a downtime of Nms (goal was …)", written by the
//! sending process.
//!
//! Then, per size and round, start to running: from the spawn of `gmemctl
//! launch -- cloud-hypervisor` (fresh gmemd memory) and of plain
//! `cloud-hypervisor --memory size=…` (anonymous memory) until the guest's
//! "gmem-pvh: up" is on the serial console.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::ch::{launch_command, ChTools, ChVm, CH_BOOT_TIMEOUT};
use gmem_tests::pvh::{self, GuestRam, UP_LINE};
use gmem_tests::qemu::gmemctl;
use gmem_tests::{e2e, median, vm_file, wait_until, ChildGuard, Daemon};
use serde_json::Value;

/// Where the bench fills guest RAM, clear of the guest's own pages.
const FILL_FROM: u64 = 16 << 20;
/// The fill's byte.
const PATTERN: u8 = 0xa5;
/// The fd number of the zone's file (`/proc/self/fd/201`).
const RAM_FD: i32 = 201;
/// Bound on each migration (4 GiB copies in about 12 s on a 2-core
/// nested-KVM machine).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the guest's start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the bench looks (the console, the destination's state).
const POLL: Duration = Duration::from_millis(1);

/// cloud-hypervisor's own figures of one migration (its log line).
#[derive(Debug, Clone, Copy)]
struct ChFigures {
    total_ms: f64,
    downtime_ms: f64,
    /// RAM sent ("Precopy complete: … total=241MiB"; no such line when
    /// RAM is handed over as fds).
    sent_bytes: f64,
}

/// One `gmemctl upgrade`.
#[derive(Debug, Clone, Copy)]
struct Upgrade {
    ch: ChFigures,
    handoff_ms: f64,
    start_ms: f64,
    elapsed_ms: f64,
}

/// One copying migration.
#[derive(Debug, Clone, Copy)]
struct Copying {
    ch: ChFigures,
    /// `send-migration` until the destination runs the VM.
    wall_ms: f64,
    /// Spawn of the destination until it listens for the migration.
    setup_ms: f64,
}

/// One start of each kind.
#[derive(Debug, Clone, Copy)]
struct Start {
    gmemctl_ms: f64,
    plain_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn med<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(xs.iter().map(f).collect())
}

fn size_label(mib: u64) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// The number in `line` right after `key`, up to `unit`.
fn number_after(line: &str, key: &str, unit: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest[..rest.find(unit)?].trim().parse().ok()
}

/// The figures of cloud-hypervisor's "Migration completed after X.Ys with
/// a downtime of Nms" line in log `text`, if there is one.
fn parse_completed(text: &str) -> Option<ChFigures> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Migration completed after"))?;
    let sent_bytes = text
        .lines()
        .rev()
        .find(|l| l.contains("Precopy complete:"))
        .map_or(Some(0.0), |l| {
            let value = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("total="))?;
            let digits = value.find(|c: char| !c.is_ascii_digit() && c != '.')?;
            let unit = match &value[digits..] {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some(value[..digits].parse::<f64>().ok()? * unit)
        })?;
    Some(ChFigures {
        total_ms: number_after(line, "Migration completed after", "s")? * 1000.0,
        downtime_ms: number_after(line, "downtime of", "ms")?,
        sent_bytes,
    })
}

/// Waits (bounded) for the line in the log at `path`.
fn completed_in(path: &Path) -> ChFigures {
    let text = || std::fs::read_to_string(path).unwrap_or_default();
    let found = (0..500).find_map(|_| {
        parse_completed(&text()).or_else(|| {
            std::thread::sleep(Duration::from_millis(10));
            None
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no \"Migration completed\" line in {}:\n{}",
            path.display(),
            text()
        )
    })
}

/// Fills `size` bytes of RAM from [`FILL_FROM`] on with [`PATTERN`].
fn fill(ram: &GuestRam, size: u64) {
    let chunk = vec![PATTERN; 8 << 20];
    let mut at = FILL_FROM;
    while at < size {
        let len = usize::try_from((size - at).min(chunk.len() as u64)).expect("small");
        let n = rustix::io::pwrite(ram.fd(), &chunk[..len], at).expect("fill guest RAM");
        assert_eq!(n, len, "short write at {at:#x}");
        at += len as u64;
    }
}

/// Whether the last page of RAM holds the fill.
fn filled_at_end(ram: &GuestRam, size: u64) -> bool {
    ram.read(size - 4096, 4096).iter().all(|&b| b == PATTERN)
}

/// Waits until the counter in `ram` moves.
fn wait_counting(ram: &GuestRam, what: &str) {
    let first = ram.counter();
    wait_until(CH_BOOT_TIMEOUT, what, || {
        (ram.counter() != first).then_some(())
    });
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `ch-remote --api-socket API ARGS`, whatever the outcome.
fn ch_remote_output(tools: &ChTools, api: &Path, args: &[&str]) -> Output {
    Command::new(&tools.remote)
        .arg("--api-socket")
        .arg(api)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("ch-remote runs")
}

/// The VM's state as `ch-remote info` reports it, if it answers.
fn vm_state(tools: &ChTools, api: &Path) -> Option<String> {
    let out = ch_remote_output(tools, api, &["info"]);
    if !out.status.success() {
        return None;
    }
    let info: Value = serde_json::from_slice(&out.stdout).ok()?;
    info["state"].as_str().map(str::to_owned)
}

/// Polls `check` every [`POLL`] until it returns `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// `gmemctl upgrade NAME` to a new `cloud-hypervisor-pvm -v --log-file
/// NEW_LOG`; the figures of the process replaced, whose log is `old_log`.
fn upgrade(
    daemon: &Daemon,
    tools: &ChTools,
    name: &str,
    old_log: &Path,
    new_log: &Path,
) -> Upgrade {
    let args = [
        "upgrade",
        name,
        "--json",
        "--timeout",
        "120",
        "--",
        path_str(&tools.pvm),
        "-v",
        "--log-file",
        path_str(new_log),
    ];
    let out = gmemctl(daemon, &args);
    assert!(
        out.status.success(),
        "gmemctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the upgrade report");
    let num = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    Upgrade {
        ch: completed_in(old_log),
        handoff_ms: num("handoff_ms"),
        start_ms: num("start_ms"),
        elapsed_ms: num("elapsed_ms"),
    }
}

/// `cmd` with `fd` at [`RAM_FD`] in the child.
fn with_ram_fd(cmd: &mut Command, fd: &OwnedFd) {
    let src = fd.as_raw_fd();
    assert_ne!(src, RAM_FD, "the memfd must not already sit at fd {RAM_FD}");
    // SAFETY: the hook runs in the forked child before exec and makes only
    // the async-signal-safe call dup2, on an fd the parent keeps open
    // until spawn returns; dup2 clears FD_CLOEXEC on the copy, so it
    // survives exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(src, RAM_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The copying migration of the VM whose API socket is `src_api` (its log
/// `src_log`) to a fresh `cloud-hypervisor-pvm` on a memfd of `size`
/// bytes; the VM then runs there. Returns the figures, the destination and
/// its RAM.
fn copy_migration(
    tools: &ChTools,
    dir: &Path,
    tag: &str,
    size: u64,
    src_api: &Path,
    src_log: &Path,
) -> (Copying, ChildGuard, GuestRam) {
    let memfd = rustix::fs::memfd_create(tag, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&memfd, size).expect("size the memfd");
    let dst_api = dir.join(format!("{tag}.dst.api"));
    let dst_log = dir.join(format!("{tag}.dst.log"));
    let migration = dir.join(format!("{tag}.mig"));
    let _ = std::fs::remove_file(&dst_api);
    let _ = std::fs::remove_file(&migration);
    let out = std::fs::File::create(dir.join(format!("{tag}.dst.out"))).expect("output file");
    let mut cmd = Command::new(&tools.pvm);
    cmd.args(["-v", "--log-file", path_str(&dst_log), "--api-socket"])
        .arg(format!("path={}", dst_api.display()))
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    with_ram_fd(&mut cmd, &memfd);
    let t_setup = Instant::now();
    let dst = ChildGuard::spawn("destination cloud-hypervisor", cmd);
    poll(Duration::from_secs(10), "the destination's API", || {
        ch_remote_output(tools, &dst_api, &["ping"])
            .status
            .success()
            .then_some(())
    });
    // `receive-migration` answers only once the migration is over.
    let receiver = {
        let (remote, api, url) = (
            tools.clone(),
            dst_api.clone(),
            format!("receiver_url=unix:{}", migration.display()),
        );
        std::thread::spawn(move || ch_remote_output(&remote, &api, &["receive-migration", &url]))
    };
    poll(Duration::from_secs(10), "the migration socket", || {
        migration.exists().then_some(())
    });
    let setup_ms = ms(t_setup.elapsed());

    let t = Instant::now();
    let send = ch_remote_output(
        tools,
        src_api,
        &[
            "send-migration",
            &format!("destination_url=unix:{}", migration.display()),
        ],
    );
    assert!(
        send.status.success(),
        "send-migration: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    poll(MIGRATION_TIMEOUT, "the destination to run the VM", || {
        (vm_state(tools, &dst_api).as_deref() == Some("Running")).then_some(())
    });
    let wall_ms = ms(t.elapsed());
    poll(
        Duration::from_secs(30),
        "receive-migration to answer",
        || receiver.is_finished().then_some(()),
    );
    let received = receiver.join().expect("the receiving thread");
    assert!(
        received.status.success(),
        "receive-migration: {}\n{}",
        String::from_utf8_lossy(&received.stderr),
        std::fs::read_to_string(&dst_log).unwrap_or_default()
    );
    let copy = Copying {
        ch: completed_in(src_log),
        wall_ms,
        setup_ms,
    };
    (copy, dst, GuestRam::new(memfd))
}

/// Spawns `cmd` (its output to `out`) and waits for the guest's line there;
/// the time from spawn, and the running process group.
fn start_to_up(name: &str, mut cmd: Command, out: &Path) -> (f64, ChildGuard) {
    let file = std::fs::File::create(out).expect("output file");
    cmd.stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .stdin(Stdio::null())
        .env_remove("RUST_BACKTRACE");
    let t = Instant::now();
    let mut guard = ChildGuard::spawn(name, cmd);
    poll(
        START_TIMEOUT,
        &format!("{name} to print {UP_LINE:?}"),
        || {
            if let Ok(Some(status)) = guard.child().try_wait() {
                panic!(
                    "{name} exited with {status}:\n{}",
                    std::fs::read_to_string(out).unwrap_or_default()
                );
            }
            std::fs::read_to_string(out)
                .ok()
                .filter(|text| text.contains(UP_LINE))
        },
    );
    (ms(t.elapsed()), guard)
}

fn wait_no_leases(daemon: &Daemon) {
    let mut ctl = daemon.control();
    wait_until(Duration::from_secs(30), "the leases to end", || {
        ctl.leases().expect("leases").is_empty().then_some(())
    });
}

/// Destroys VM `name`'s RAM file once nothing holds it.
fn destroy_ram(daemon: &Daemon, name: &str) {
    let file = vm_file(name, &format!("{name}.ram"));
    wait_until(Duration::from_secs(30), "the VM's lease to end", || {
        daemon.control().destroy_in(&file).ok()
    });
}

/// One round of upgrade and copying migration of a filled VM of `mib` MiB.
fn migrate_round(
    daemon: &Daemon,
    tools: &ChTools,
    dir: &Path,
    mib: u64,
    round: usize,
) -> (Upgrade, Copying) {
    let size = mib << 20;
    let name = format!("chb-{mib}m");
    let tag = format!("{name}-r{round}");
    let log = |what: &str| dir.join(format!("{tag}.{what}.log"));
    let (src_log, up_log) = (log("src"), log("up"));
    let mut ch = ChVm::launch(
        daemon,
        dir,
        &name,
        &format!("{mib}M"),
        &tools.pvm,
        &["-v", "--log-file", path_str(&src_log)],
    );
    let t = Instant::now();
    fill(&ch.ram, size);
    eprintln!(
        "  round {round}: filled {} MiB in {:.0} ms",
        (size - FILL_FROM) >> 20,
        ms(t.elapsed())
    );

    // (a) gmemctl upgrade: the RAM stays where it is.
    let up = upgrade(daemon, tools, &name, &src_log, &up_log);
    ch.wait_counting();
    assert!(filled_at_end(&ch.ram, size));
    eprintln!("  round {round}: gmemctl upgrade {up:?}");

    // (b) copying migration of the same VM, now in the upgraded process.
    let (copy, dst, dst_ram) = copy_migration(tools, dir, &tag, size, &ch.api(daemon), &up_log);
    wait_counting(&dst_ram, "the guest to count at the destination");
    assert!(
        filled_at_end(&dst_ram, size),
        "the fill did not reach the destination"
    );
    eprintln!("  round {round}: copying migration {copy:?}");

    // The source exits after its send; the launcher follows it.
    let status = ch.vm.wait_exit(Duration::from_secs(30));
    eprintln!("  round {round}: gmemctl launch ended ({status}) with the migrated-away VM");
    drop(dst);
    drop(dst_ram);
    wait_no_leases(daemon);
    drop(ch);
    (up, copy)
}

/// One start of the guest each way, with `mib` MiB of RAM.
fn start_round(daemon: &Daemon, tools: &ChTools, dir: &Path, mib: u64, round: usize) -> Start {
    let name = format!("chs-{mib}m");
    let tag = format!("{name}-r{round}");
    let memory = format!("{mib}M");
    let cmd = launch_command(
        daemon,
        dir,
        &name,
        &["--memory", &memory],
        &tools.stock,
        &[],
    );
    let (gmemctl_ms, guard) = start_to_up(
        "gmemctl launch",
        cmd,
        &dir.join(format!("{tag}.gmemctl.out")),
    );
    drop(guard);
    wait_no_leases(daemon);
    // Fresh gmemd memory every round, as plain cloud-hypervisor gets.
    destroy_ram(daemon, &name);

    let mut cmd = Command::new(&tools.stock);
    cmd.arg("--kernel")
        .arg(pvh::write_elf(dir))
        .args(["--memory", &format!("size={mib}M")])
        .args(["--serial", "tty", "--console", "off"]);
    let (plain_ms, guard) = start_to_up(
        "cloud-hypervisor",
        cmd,
        &dir.join(format!("{tag}.plain.out")),
    );
    drop(guard);
    Start {
        gmemctl_ms,
        plain_ms,
    }
}

fn ratio(base: f64, ours: f64) -> String {
    if ours <= 0.0 || !ours.is_finite() || !base.is_finite() {
        return "-".to_owned();
    }
    let r = base / ours;
    if r >= 10.0 {
        format!("{r:.0}x")
    } else {
        format!("{r:.1}x")
    }
}

fn main() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![256, 1024, 4096]
    } else {
        sizes
    };
    assert!(
        sizes.iter().all(|&m| m >= 64),
        "sizes are in MiB, at least 64"
    );
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let daemon = Daemon::start();
    let dir = tempfile::Builder::new()
        .prefix("gmem-bench-ch")
        .tempdir()
        .expect("temp dir");
    let dir_path: PathBuf = dir.path().to_owned();

    let mut rows = Vec::new();
    for &mib in &sizes {
        eprintln!("{}: {rounds} rounds", size_label(mib));
        let mut ups = Vec::new();
        let mut copies = Vec::new();
        let mut starts = Vec::new();
        for round in 0..rounds {
            let (up, copy) = migrate_round(&daemon, &tools, &dir_path, mib, round);
            ups.push(up);
            copies.push(copy);
        }
        // Free the filled RAM before the next size.
        destroy_ram(&daemon, &format!("chb-{mib}m"));
        for round in 0..rounds {
            let start = start_round(&daemon, &tools, &dir_path, mib, round);
            eprintln!("  round {round}: start to running {start:?}");
            starts.push(start);
        }
        rows.push((mib, ups, copies, starts));
    }

    print_tables(&rows, rounds, &tools);
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / 1024.0 / 1024.0)
}

type Row = (u64, Vec<Upgrade>, Vec<Copying>, Vec<Start>);

fn print_tables(rows: &[Row], rounds: usize, tools: &ChTools) {
    println!();
    println!("Downtime (guest paused), cloud-hypervisor's own figure:");
    println!();
    println!(
        "| guest RAM (filled from 16 MiB) | gmemctl upgrade (local, RAM as fds) \
         | CH copying migration (local=off) | copying / upgrade |"
    );
    println!("|---|---|---|---|");
    for (size, ups, copies, _) in rows {
        let (up, copy) = (
            med(ups, |u| u.ch.downtime_ms),
            med(copies, |c| c.ch.downtime_ms),
        );
        println!(
            "| {} | {up:.0} ms | {copy:.0} ms | {} |",
            size_label(*size),
            ratio(copy, up)
        );
    }

    println!();
    println!("Whole migration:");
    println!();
    println!(
        "| guest RAM | gmemctl upgrade: handoff / new CH up / elapsed (CH total; RAM sent) \
         | CH copying migration: wall, send to Running / destination up (CH total; RAM sent) \
         | wall / handoff | wall + destination up / elapsed |"
    );
    println!("|---|---|---|---|---|");
    for (size, ups, copies, _) in rows {
        let (handoff, up_start, elapsed, up_total, up_sent) = (
            med(ups, |u| u.handoff_ms),
            med(ups, |u| u.start_ms),
            med(ups, |u| u.elapsed_ms),
            med(ups, |u| u.ch.total_ms),
            med(ups, |u| u.ch.sent_bytes),
        );
        let (wall, setup, copy_total, copy_sent) = (
            med(copies, |c| c.wall_ms),
            med(copies, |c| c.setup_ms),
            med(copies, |c| c.ch.total_ms),
            med(copies, |c| c.ch.sent_bytes),
        );
        let copy_sum = med(copies, |c| c.wall_ms + c.setup_ms);
        println!(
            "| {} | {handoff:.1} ms / {up_start:.1} ms / {elapsed:.1} ms ({:.1} s; {}) \
             | {wall:.0} ms / {setup:.1} ms ({:.1} s; {}) | {} | {} |",
            size_label(*size),
            up_total / 1000.0,
            mib(up_sent),
            copy_total / 1000.0,
            mib(copy_sent),
            ratio(wall, handoff),
            ratio(copy_sum, elapsed)
        );
    }

    println!();
    println!("Start to running (spawn to \"{UP_LINE}\" on the console, fresh memory):");
    println!();
    println!(
        "| guest RAM | gmemctl launch -- cloud-hypervisor (gmemd memory) \
         | cloud-hypervisor --memory size= (anonymous) | gmemctl / plain |"
    );
    println!("|---|---|---|---|");
    for (size, _, _, starts) in rows {
        let (ours, plain) = (med(starts, |s| s.gmemctl_ms), med(starts, |s| s.plain_ms));
        println!(
            "| {} | {ours:.1} ms | {plain:.1} ms | {:.2}x |",
            size_label(*size),
            ours / plain
        );
    }
    println!(
        "\nMedians of {rounds} round(s); cloud-hypervisor {}: {} for the migrations, {} for \
         the starts. Downtime, CH total (0.1 s resolution) and RAM sent from the sending \
         cloud-hypervisor's log at -v (\"Migration completed after X.Ys with a downtime of \
         Nms\", \"Precopy complete: ... total=\"); handoff, new CH up and elapsed from \
         `gmemctl upgrade --json` (handoff_ms, start_ms, elapsed_ms); wall from `ch-remote \
         send-migration` until the destination's `ch-remote info` says Running; destination \
         up = its spawn until it listens for the migration.",
        ch_version(&tools.pvm),
        tools.pvm.display(),
        tools.stock.display()
    );
}

fn ch_version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .env_remove("RUST_BACKTRACE")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("cloud-hypervisor ").to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}
