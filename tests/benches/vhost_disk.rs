//! gmemd's vhost-user-blk disk against QEMU's own virtio-blk on a file in
//! a tmpfs, measured inside one guest that has both (issue 11), and the
//! time from QEMU's start to a memory table that confirms every binding,
//! against the time to QEMU's QMP answering.
//!
//! ```text
//! cargo bench -p gmem-tests --bench vhost_disk          # 7 rounds, 5 launches
//! cargo bench -p gmem-tests --bench vhost_disk -- 5 9   # rounds, launches
//! ```
//!
//! Disk: one TCG guest (`gmem.bench=ROUNDS`, `tests/guest/init`) with
//! gmemd's disk (`gmemctl launch --disk`, a memfd) and the baseline
//! (`-drive file=/dev/shm/…,cache=none,aio=threads -device virtio-blk-pci`),
//! both `DISK` large. busybox `dd` with O_DIRECT does all I/O, phase by
//! phase, each on both disks back to back (the order flips every round).
//! Figures are the median over rounds; the ratio is the median of each
//! round's own ratio, so load that comes and goes on the host shifts both
//! disks alike.
//!
//! Memory table: `gmemctl launch` with gmemd's device and no disk of a
//! SeaBIOS-only q35 QEMU; from QEMU's process start (`/proc/PID/stat`, 10 ms
//! steps) to every binding of its RAM file `confirmed` in STATUS (what
//! `gmemctl status --json` shows), and to QEMU answering `query-status` on
//! a QMP socket of its own.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::qemu::{LaunchSpec, Vm, BOOT_TIMEOUT};
use gmem_tests::{e2e, median, vm_file, wait_until, ChildGuard, Daemon};
use gmemctl::qmp::QmpClient;

/// Size of each disk.
const DISK_MIB: u64 = 128;
/// Serial of the baseline disk (gmemd's are `gmemd-dN`).
const BASELINE_SERIAL: &str = "qemu-baseline";
/// Guest RAM for the SeaBIOS launches: q35 splits it into 2 regions.
const SEABIOS_RAM: &str = "4G";
/// Bound on one SeaBIOS launch reaching a confirmed table.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one round of disk phases on a busy 2-core host.
const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's phases: (name, row label, unit).
const PHASES: [(&str, &str, Unit); 6] = [
    ("randr", "4 KiB random read", Unit::Iops),
    ("randw", "4 KiB random write", Unit::Iops),
    ("qd1r", "4 KiB read, QD1, one dd", Unit::Iops),
    ("qd1w", "4 KiB write, QD1, one dd", Unit::Iops),
    ("seqr", "1 MiB sequential read", Unit::MibPerSec),
    ("seqw", "1 MiB sequential write", Unit::MibPerSec),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Iops,
    MibPerSec,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Iops => "IOPS",
            Unit::MibPerSec => "MiB/s",
        }
    }
}

/// One `GMEM-GUEST: bench disk=S phase=P round=R ops=N bytes=B us=T` line.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    gmemd: bool,
    phase: String,
    round: u32,
    ops: u64,
    bytes: u64,
    us: u64,
}

impl Sample {
    fn parse(line: &str) -> Option<Sample> {
        let rest = &line[line.find("GMEM-GUEST: bench disk=")? + "GMEM-GUEST: bench ".len()..];
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        let disk = field("disk")?;
        Some(Sample {
            gmemd: disk != BASELINE_SERIAL,
            phase: field("phase")?.to_owned(),
            round: field("round")?.parse().ok()?,
            ops: field("ops")?.parse().ok()?,
            bytes: field("bytes")?.parse().ok()?,
            us: field("us")?.parse().ok()?,
        })
    }

    fn rate(&self, unit: Unit) -> f64 {
        let secs = self.us as f64 / 1e6;
        match unit {
            Unit::Iops => self.ops as f64 / secs,
            Unit::MibPerSec => self.bytes as f64 / (1024.0 * 1024.0) / secs,
        }
    }
}

/// One row of the disk table.
#[derive(Debug)]
struct DiskRow {
    label: &'static str,
    unit: Unit,
    gmemd: f64,
    baseline: f64,
    ratio: f64,
}

/// What the disk part found.
#[derive(Debug)]
struct DiskFigures {
    rows: Vec<DiskRow>,
    /// Per disk (gmemd, baseline): mean cost of starting one dd in the
    /// random phases (ms), and its share of the random-read phase.
    dd_start: [(f64, f64); 2],
    /// The guest's description of each disk.
    disks: Vec<String>,
    cache: &'static str,
    rounds: u32,
}

/// QEMU's `cache=` for the baseline: `none` (O_DIRECT, as QEMU advises)
/// where this tmpfs takes O_DIRECT (Linux 6.6 on), else `writeback`.
fn baseline_cache(image: &Path) -> &'static str {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)
    {
        Ok(_) => "none",
        Err(_) => "writeback",
    }
}

fn disk_bench(daemon: &Daemon, dir: &Path, rounds: u32) -> DiskFigures {
    let image = tempfile::Builder::new()
        .prefix("gmem-bench-baseline")
        .suffix(".img")
        .tempfile_in("/dev/shm")
        .expect("baseline image in /dev/shm");
    image
        .as_file()
        .set_len(DISK_MIB << 20)
        .expect("baseline image size");
    let cache = baseline_cache(image.path());
    let mut spec = LaunchSpec::new("256M", &format!("gmem.bench={rounds}"));
    spec.gmemctl_args = vec!["--disk".into(), format!("bench={DISK_MIB}M")];
    spec.qemu_args = vec![
        "-drive".into(),
        format!(
            "file={},if=none,id=base0,format=raw,cache={cache},aio=threads",
            image.path().display()
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive=base0,serial={BASELINE_SERIAL}"),
    ];
    eprintln!(
        "disk: booting one guest with both disks, {rounds} round(s) of I/O \
         (~10 s a round on a quiet host)..."
    );
    let t = Instant::now();
    let mut vm = Vm::launch(daemon, dir, "bench-disk", &spec);
    let timeout = BOOT_TIMEOUT + ROUND_TIMEOUT * rounds;
    let text = vm.serial.wait_for("GMEM-GUEST: bench done", timeout);
    assert!(
        !text.contains("GMEM-GUEST: error"),
        "the guest reported an error:\n{text}"
    );
    assert!(vm.wait_exit(BOOT_TIMEOUT).success());
    eprintln!("  done in {:.0} s", t.elapsed().as_secs_f64());

    let disks: Vec<String> = text
        .lines()
        .filter(|l| l.contains("GMEM-GUEST: bench disk=") && l.contains(" dev="))
        .map(|l| l[l.find("disk=").expect("matched")..].trim_end().to_owned())
        .collect();
    let samples: Vec<Sample> = text.lines().filter_map(Sample::parse).collect();
    for s in &samples {
        eprintln!("  {s:?}");
    }
    let has = |gmemd: bool| samples.iter().any(|s| s.gmemd == gmemd);
    assert!(has(true) && has(false), "both disks measured:\n{text}");

    let of = |gmemd: bool, phase: &str| -> BTreeMap<u32, &Sample> {
        samples
            .iter()
            .filter(|s| s.gmemd == gmemd && s.phase == phase)
            .map(|s| (s.round, s))
            .collect()
    };
    let rows = PHASES
        .iter()
        .map(|&(phase, label, unit)| {
            let (g, b) = (of(true, phase), of(false, phase));
            let rates = |m: &BTreeMap<u32, &Sample>| m.values().map(|s| s.rate(unit)).collect();
            let ratios = g
                .iter()
                .filter_map(|(r, gs)| Some(gs.rate(unit) / b.get(r)?.rate(unit)))
                .collect();
            DiskRow {
                label,
                unit,
                gmemd: median(rates(&g)),
                baseline: median(rates(&b)),
                ratio: median(ratios),
            }
        })
        .collect();
    let dd_start = [true, false].map(|gmemd| {
        let sum = |phase: &str| of(gmemd, phase).values().map(|s| s.us).sum::<u64>() as f64;
        // The exec phase starts as many dd's as the random phases, 16 a round.
        let starts = 16.0 * of(gmemd, "exec").len() as f64;
        (sum("exec") / 1000.0 / starts, sum("exec") / sum("randr"))
    });
    DiskFigures {
        rows,
        dd_start,
        disks,
        cache,
        rounds,
    }
}

/// CLOCK_BOOTTIME, the clock of `/proc/PID/stat`'s start time.
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call;
    // clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    Duration::new(
        u64::try_from(ts.tv_sec).expect("boottime is positive"),
        u32::try_from(ts.tv_nsec).expect("nanoseconds fit"),
    )
}

/// When process `pid` started, on CLOCK_BOOTTIME (in clock ticks).
fn process_start(pid: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields after the ")" that ends the command name start at 3.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// One SeaBIOS launch: ms from QEMU's start to its table confirmed and to
/// QMP answering, and from `gmemctl launch` to QEMU's start.
#[derive(Debug, Clone, Copy)]
struct Launch {
    confirmed_ms: f64,
    qmp_ms: f64,
    qemu_start_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn seabios_launch(daemon: &Daemon, dir: &Path, vm: &str, vhost_flag: bool) -> Launch {
    let qmp_path = dir.join(format!("{vm}.test-qmp"));
    let log = std::fs::File::create(dir.join(format!("{vm}.launcher.log"))).expect("log");
    let mut cmd: Command = daemon.gmemctl();
    cmd.args(["launch", "--vm", vm, "--memory", SEABIOS_RAM]);
    if vhost_flag {
        cmd.arg("--vhost-device");
    }
    cmd.arg("--")
        .arg(e2e::qemu().expect("checked"))
        .args(["-accel", "tcg", "-machine", "q35", "-nodefaults"])
        .args(["-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-serial", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let (t0, boot0) = (Instant::now(), boottime());
    let launcher = ChildGuard::spawn("gmemctl launch", cmd);

    let qmp = std::thread::spawn(move || {
        let mut qmp = QmpClient::connect(&qmp_path, CONFIRM_TIMEOUT).expect("QEMU's QMP socket");
        qmp.execute("query-status", None).expect("query-status");
        t0.elapsed()
    });

    let record = daemon.dir().join("vms").join(format!("{vm}.json"));
    let ram = format!("{vm}.ram");
    let mut control = daemon.control();
    let mut qemu_start = None;
    let confirmed = loop {
        assert!(
            t0.elapsed() < CONFIRM_TIMEOUT,
            "{vm}: no confirmed memory table after {CONFIRM_TIMEOUT:?}"
        );
        let files = control.files().expect("STATUS");
        let done = files.iter().any(|f| {
            f.name.as_str() == ram
                && !f.bindings.is_empty()
                && f.bindings.iter().all(|b| b.confirmed)
        });
        if done {
            break t0.elapsed();
        }
        if qemu_start.is_none() {
            qemu_start = std::fs::read_to_string(&record)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|r| r["vmm"]["process"]["pid"].as_u64())
                .and_then(process_start);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let qmp = qmp.join().expect("QMP thread");
    let qemu_start = qemu_start
        .expect("QEMU's pid in the VM record before the table was confirmed")
        .saturating_sub(boot0);
    drop(launcher);
    let file = vm_file(vm, &ram);
    wait_until(Duration::from_secs(30), "the VM's lease to end", || {
        daemon.control().destroy_in(&file).ok()
    });
    Launch {
        confirmed_ms: ms(confirmed.saturating_sub(qemu_start)),
        qmp_ms: ms(qmp.saturating_sub(qemu_start)),
        qemu_start_ms: ms(qemu_start),
    }
}

fn main() {
    if e2e::qemu().is_none() {
        return;
    }
    std::env::set_var("GMEMD_TEST_LOG", "info");
    // `cargo bench` adds `--bench`; numbers are ours.
    let numbers: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = numbers.first().copied().unwrap_or(7).max(1);
    let launches = numbers.get(1).copied().unwrap_or(5).max(1);

    let daemon = Daemon::start();
    let dir = tempfile::Builder::new()
        .prefix("gmem-bench")
        .tempdir()
        .expect("temp dir");
    let t = Instant::now();
    let disk = disk_bench(&daemon, dir.path(), rounds);

    // gmemctl launch attached the device by --vhost-device once; newer
    // ones attach it unless --no-vhost-device.
    let help = daemon
        .gmemctl()
        .args(["launch", "--help"])
        .output()
        .expect("gmemctl launch --help");
    let vhost_flag = String::from_utf8_lossy(&help.stdout).contains(" --vhost-device");
    eprintln!("memory table: {launches} SeaBIOS launch(es) of {SEABIOS_RAM}...");
    let runs: Vec<Launch> = (0..launches)
        .map(|i| {
            let l = seabios_launch(&daemon, dir.path(), &format!("bench-mt{i}"), vhost_flag);
            eprintln!("  {l:?}");
            l
        })
        .collect();
    let col = |f: fn(&Launch) -> f64| {
        let xs: Vec<f64> = runs.iter().map(f).collect();
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        format!("{:.0} ms ({lo:.0}–{hi:.0})", median(xs))
    };

    println!();
    println!(
        "| in the guest (TCG), {DISK_MIB} MiB disks | gmemd vhost-user-blk (memfd) \
         | QEMU virtio-blk (tmpfs file, cache={}, aio=threads) | gmemd / baseline |",
        disk.cache
    );
    println!("|---|---:|---:|---:|");
    for r in &disk.rows {
        println!(
            "| {} ({}) | {:.0} | {:.0} | {:.2} |",
            r.label,
            r.unit.name(),
            r.gmemd,
            r.baseline,
            r.ratio
        );
    }
    println!();
    println!(
        "| from QEMU's process start, median of {launches} (min–max) | gmemd: every RAM \
         binding confirmed | QEMU: QMP answers query-status |"
    );
    println!("|---|---:|---:|");
    println!(
        "| SeaBIOS q35, {SEABIOS_RAM}, gmemd's device without a disk | {} | {} |",
        col(|l| l.confirmed_ms),
        col(|l| l.qmp_ms)
    );
    println!();
    for d in &disk.disks {
        println!("disk {d}");
    }
    let [(g_ms, g_share), (b_ms, b_share)] = disk.dd_start;
    println!(
        "Median of {} round(s); ratio = median of each round's gmemd/baseline. \
         Random: 16 dd's a round, each 64 O_DIRECT 4 KiB requests (QD1) at a \
         pseudo-random 4 KiB-aligned offset; starting a dd costs {g_ms:.1} / {b_ms:.1} ms \
         (gmemd / baseline), {:.0}% / {:.0}% of the random-read time, included. \
         QD1: one dd, 1024 requests at consecutive offsets. Sequential: one dd of \
         the whole disk, bs=1M, O_DIRECT. gmemctl launch to QEMU's start: {}. \
         Total {:.0} s.",
        disk.rounds,
        g_share * 100.0,
        b_share * 100.0,
        col(|l| l.qemu_start_ms),
        t.elapsed().as_secs_f64()
    );
}
