//! Handoff time of `gmemctl upgrade` (local migration with `x-ignore-shared`
//! on gmemd memory) against two baselines without gmemd, for guests with
//! most of their RAM filled: QEMU with its RAM on a shared file handed to a
//! new QEMU the same way (`x-ignore-shared`, what gmemd's handoff costs
//! beyond QEMU's own), and QEMU's copying migration.
//!
//! Shared by the bench binary (`tests/bench/main.rs`, group `upgrade`) and
//! `cargo bench -p gmem-tests --bench upgrade` (`tests/benches/upgrade.rs`),
//! so it uses nothing but the harness.
//!
//! Each size boots two guests under TCG, both filling part of their RAM
//! with non-zero data (`gmem.fill`, 3/4 of it unless told otherwise): one
//! under `gmemctl launch`, upgraded `upgrades` times while the other is
//! paused, and one plain QEMU (RAM a `memory-backend-file` on tmpfs,
//! `share=on`) handed over `upgrades` times with `x-ignore-shared` to a new
//! QEMU on the same file, then migrated twice by copying (to a fresh QEMU
//! on a fresh file, and from that one to another) with `max-bandwidth`
//! raised from its 128 MiB/s default, after the first guest is gone.
//! Times are QEMU's own `query-migrate` figures (`total-time`, `downtime`,
//! `ram.transferred`), the wall time from `migrate` to `completed`, and the
//! whole handoff: from starting the new QEMU to the guest running there
//! (for `gmemctl upgrade`, the command's own `elapsed_ms`).
//!
//! A failure panics (the harness's way): the bench binary turns that into
//! an `n/a` row.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::guest::Guest;
use gmem_tests::qemu::{gmemctl_json, qemu_config, SerialLog, Vm};
use gmem_tests::{e2e, ChildGuard, Daemon};
use gmemctl::qmp::QmpClient;
use serde_json::{json, Value};

/// Bound on boot + fill of the largest guest under TCG.
const FILL_TIMEOUT: Duration = Duration::from_secs(900);
/// Copying migrations per size; the faster is reported.
const COPIES: usize = 2;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Guest RAM sizes, GiB.
    pub gib: Vec<u64>,
    /// Upgrades per size (the median is reported).
    pub upgrades: usize,
    /// MiB the guest fills; `None`: 3/4 of its RAM.
    pub fill_mib: Option<u64>,
}

/// One migration's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// QEMU's `total-time`, ms.
    pub total_ms: f64,
    /// QEMU's `downtime`, ms.
    pub downtime_ms: f64,
    /// From `migrate` to `completed` as the caller saw it, ms.
    pub wall_ms: f64,
    /// RAM sent, bytes.
    pub sent_bytes: f64,
    /// From starting the new QEMU to the guest running there, ms.
    pub whole_ms: f64,
}

/// The figures of one guest size.
#[derive(Debug, Clone, Copy)]
pub struct SizeFigures {
    /// Guest RAM, GiB.
    pub gib: u64,
    /// MiB the guest filled.
    pub fill_mib: u64,
    /// gmemctl upgrade: the median of the upgrades.
    pub upgrade: Figures,
    /// QEMU alone, RAM on a shared file, `x-ignore-shared`: the median.
    pub shared: Figures,
    /// QEMU's copying migration: the faster of two.
    pub copy: Figures,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The run whose whole handoff (start to running, the rows' figure) is
/// the median.
fn median(mut xs: Vec<Figures>) -> Figures {
    xs.sort_by(|a, b| a.whole_ms.total_cmp(&b.whole_ms));
    xs[xs.len() / 2]
}

/// The `gmemctl launch` command of a TCG guest booting `guest` with
/// `params`, its console appended to `DIR/NAME.serial`.
fn launch_command(
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    gib: u64,
    guest: &Guest,
    params: &str,
) -> Command {
    let qemu = e2e::qemu().expect("QEMU is present (checked by run)");
    let mut cmd = daemon.gmemctl();
    cmd.args(["launch", "--vm", name, "--memory", &format!("{gib}G"), "--"])
        .arg(qemu)
        .args(["-accel", "tcg", "-readconfig"])
        .arg(qemu_config("q35-gmemd.cfg"))
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-chardev"])
        .arg(format!(
            "file,id=ser0,path={},append=on",
            dir.join(format!("{name}.serial")).display()
        ))
        .args(["-serial", "chardev:ser0"])
        .args(guest.boot_args(params))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// A QEMU without gmemd, for the copying-migration baseline.
struct PlainQemu {
    _guard: ChildGuard,
    qmp: QmpClient,
    serial: SerialLog,
}

impl PlainQemu {
    /// Starts QEMU with `gib` GiB of RAM in the file `ram` (shared).
    fn start(
        dir: &Path,
        tag: &str,
        gib: u64,
        guest: &Guest,
        params: &str,
        ram: &Path,
        incoming: bool,
    ) -> PlainQemu {
        let qemu = e2e::qemu().expect("checked");
        let serial = dir.join(format!("{tag}.serial"));
        let qmp = dir.join(format!("{tag}.qmp"));
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg", "-machine", "q35,memory-backend=ram0"])
            .args(["-m", &format!("{gib}G"), "-object"])
            .arg(format!(
                "memory-backend-file,id=ram0,size={gib}G,mem-path={},share=on",
                ram.display()
            ))
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none", "-chardev"])
            .arg(format!("file,id=ser0,path={},append=on", serial.display()))
            .args(["-serial", "chardev:ser0", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(guest.boot_args(params))
            .stdin(Stdio::null());
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let guard = ChildGuard::spawn(tag, cmd);
        PlainQemu {
            _guard: guard,
            qmp: QmpClient::connect(&qmp, Duration::from_secs(60)).expect("QEMU's QMP socket"),
            serial: SerialLog::new(serial),
        }
    }

    fn set_ignore_shared(&mut self, on: bool) {
        self.qmp
            .migrate_set_capabilities(&[("x-ignore-shared", on)])
            .expect("migrate-set-capabilities");
    }
}

/// Migrates `src` to `dst` (started with `-incoming defer`) over a unix
/// socket named after `tag`; `started` is when `dst` was started. Waits
/// for the guest to run at `dst` and to tick there; `dst` becomes `src`.
fn migrate_to(
    dir: &Path,
    tag: &str,
    src: &mut PlainQemu,
    mut dst: PlainQemu,
    started: Instant,
) -> Figures {
    let uri = format!("unix:{}", dir.join(format!("{tag}.mig")).display());
    src.qmp
        .execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": 64u64 << 30})),
        )
        .expect("migrate-set-parameters");
    dst.qmp
        .execute("migrate-incoming", Some(json!({"uri": uri})))
        .expect("migrate-incoming");
    let t = Instant::now();
    src.qmp
        .execute("migrate", Some(json!({"uri": uri})))
        .expect("migrate");
    let deadline = t + FILL_TIMEOUT;
    let info = loop {
        let info = src
            .qmp
            .execute("query-migrate", None)
            .expect("query-migrate");
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => panic!("migration failed: {info}"),
            _ if Instant::now() > deadline => panic!("migration unfinished: {info}"),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    loop {
        let status = dst.qmp.query_status().expect("query-status");
        if status == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the new QEMU is {status}");
        std::thread::sleep(Duration::from_micros(200));
    }
    let whole_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The guest runs on at the destination.
    let last = src.serial.last_tick().map_or(0, |t| t.n);
    dst.serial
        .wait_tick(last, Duration::from_secs(60), |_| true);
    eprintln!(
        "  {tag}: {wall_ms:.1} ms migrate to completed, {whole_ms:.1} ms start to running, \
         {} Mbit/s, {} dirty syncs",
        info["ram"]["mbps"], info["ram"]["dirty-sync-count"]
    );
    std::mem::swap(src, &mut dst);
    Figures {
        total_ms: num(&info["total-time"]),
        downtime_ms: num(&info["downtime"]),
        wall_ms,
        sent_bytes: num(&info["ram"]["transferred"]),
        whole_ms,
    }
}

/// `src` migrated to a new QEMU with its RAM in the file `ram`, which
/// becomes `src`. `ignore_shared`: `ram` is `src`'s own file and the RAM
/// stays in it (`x-ignore-shared`, QEMU's own handoff, without gmemd);
/// otherwise `ram` is a fresh file and the RAM is copied.
#[allow(clippy::too_many_arguments)]
fn handoff(
    dir: &Path,
    tag: &str,
    gib: u64,
    guest: &Guest,
    params: &str,
    ram: &Path,
    src: &mut PlainQemu,
    ignore_shared: bool,
) -> Figures {
    let started = Instant::now();
    let mut dst = PlainQemu::start(dir, tag, gib, guest, params, ram, true);
    src.set_ignore_shared(ignore_shared);
    dst.set_ignore_shared(ignore_shared);
    migrate_to(dir, tag, src, dst, started)
}

fn upgrade(daemon: &Daemon, vm: &str) -> Figures {
    let r = gmemctl_json(daemon, &["upgrade", vm]);
    Figures {
        total_ms: num(&r["total_time_ms"]),
        downtime_ms: num(&r["downtime_ms"]),
        wall_ms: num(&r["handoff_ms"]),
        sent_bytes: num(&r["ram_transferred_bytes"]),
        whole_ms: num(&r["elapsed_ms"]),
    }
}

fn mib(bytes: f64) -> String {
    if bytes < 1024.0 * 1024.0 {
        format!("{:.0} KiB", bytes / 1024.0)
    } else {
        format!("{:.0} MiB", bytes / 1024.0 / 1024.0)
    }
}

/// Measures every size of `settings`, booting `guest`. `None` where QEMU
/// is missing and may be (see `gmem_tests::e2e`).
pub fn run(settings: &Settings, guest: &Guest) -> Option<Vec<SizeFigures>> {
    e2e::qemu()?;
    let daemon = Daemon::start();
    let dir = tempfile::Builder::new()
        .prefix("gmem-bench")
        .tempdir()
        .expect("temp dir");
    let mut rows = Vec::new();
    for &gib in &settings.gib {
        let fill = settings.fill_mib.unwrap_or(gib * 1024 * 3 / 4);
        let params = format!("gmem.fill={fill} gmem.tick=1");
        eprintln!("upgrade, {gib} GiB: booting both guests and filling {fill} MiB each...");
        let t = Instant::now();
        let vm_name = format!("bench-{gib}g");
        let cmd = launch_command(&daemon, dir.path(), &vm_name, gib, guest, &params);
        let serial = dir.path().join(format!("{vm_name}.serial"));
        let vm = Vm::start(&daemon, dir.path(), &vm_name, cmd, Some(serial));
        let plain_tag = format!("plain-{gib}g");
        let ram_file = |n: usize| dir.path().join(format!("{plain_tag}-{n}.ram"));
        let mut plain = PlainQemu::start(
            dir.path(),
            &plain_tag,
            gib,
            guest,
            &params,
            &ram_file(0),
            false,
        );
        for serial in [&vm.serial, &plain.serial] {
            let text = serial.wait_for("GMEM-GUEST: filled", FILL_TIMEOUT);
            assert!(!text.contains("GMEM-GUEST: error"), "{text}");
        }
        eprintln!("  filled in {:.0} s", t.elapsed().as_secs_f64());

        // Measure each side alone on the machine: the other guest paused
        // or gone.
        plain.qmp.execute("stop", None).expect("stop");
        let upgrades: Vec<Figures> = (0..settings.upgrades)
            .map(|_| upgrade(&daemon, &vm_name))
            .collect();
        let last = vm.serial.last_tick().map_or(0, |t| t.n);
        vm.serial.wait_tick(last, Duration::from_secs(60), |_| true);
        eprintln!("  gmemctl upgrade x{}: {upgrades:?}", settings.upgrades);
        drop(vm);
        plain.qmp.execute("cont", None).expect("cont");
        let shared: Vec<Figures> = (0..settings.upgrades)
            .map(|n| {
                let tag = format!("{plain_tag}-shared-{n}");
                let ram = ram_file(0);
                handoff(
                    dir.path(),
                    &tag,
                    gib,
                    guest,
                    &params,
                    &ram,
                    &mut plain,
                    true,
                )
            })
            .collect();
        eprintln!("  QEMU x-ignore-shared handoffs: {shared:?}");
        // The first migration of a freshly filled TCG guest is several
        // times slower than the next one; report the faster of two (there
        // and on), the baseline least favourable to gmemd. Each copy goes
        // to a fresh file (the old one is let go with its QEMU).
        let copies: Vec<Figures> = (0..COPIES)
            .map(|n| {
                let tag = format!("{plain_tag}-copy-{n}");
                let ram = ram_file(n + 1);
                let figures = handoff(
                    dir.path(),
                    &tag,
                    gib,
                    guest,
                    &params,
                    &ram,
                    &mut plain,
                    false,
                );
                let _ = std::fs::remove_file(ram_file(n));
                figures
            })
            .collect();
        eprintln!("  copying migrations: {copies:?}");
        let copy = copies
            .into_iter()
            .min_by(|a, b| a.total_ms.total_cmp(&b.total_ms))
            .expect("two runs");
        rows.push(SizeFigures {
            gib,
            fill_mib: fill,
            upgrade: median(upgrades),
            shared: median(shared),
            copy,
        });
        drop(plain);
        let _ = std::fs::remove_file(ram_file(COPIES));
        // The VM's RAM is in the VM's namespace (an operator names it so).
        let file = gmem_tests::vm_file(&vm_name, &format!("{vm_name}.ram"));
        gmem_tests::wait_until(Duration::from_secs(30), "the VM's lease to end", || {
            daemon.control().destroy_in(&file).ok()
        });
    }
    Some(rows)
}

/// Columns of the figures' table.
pub const HEADER: [&str; 4] = [
    "guest RAM (filled)",
    "gmemctl upgrade: start to running (migrate to completed) / total / downtime / RAM sent",
    "QEMU alone, shared file, x-ignore-shared: the same",
    "QEMU copying migration: the same",
];

/// One size's cells under [`HEADER`].
pub fn cells(row: &SizeFigures) -> [String; 4] {
    let text = |f: Figures| {
        format!(
            "{:.1} ms ({:.1} ms) / {:.0} ms / {:.0} ms / {}",
            f.whole_ms,
            f.wall_ms,
            f.total_ms,
            f.downtime_ms,
            mib(f.sent_bytes)
        )
    };
    [
        format!("{} GiB ({} MiB)", row.gib, row.fill_mib),
        text(row.upgrade),
        text(row.shared),
        text(row.copy),
    ]
}

/// What the figures are, under the table.
pub fn note(settings: &Settings) -> String {
    format!(
        "gmemctl upgrade and QEMU's shared-file handoff: medians of {}; copying migration: \
         the faster of {COPIES} (max-bandwidth 64 GiB/s). start to running: from starting the \
         new QEMU to query-status running (gmemctl upgrade: the whole command, elapsed_ms); \
         total, downtime, RAM sent: QEMU's query-migrate (total-time, downtime, \
         ram.transferred), measured, not recorded; TCG guests. QEMU 10's cpr-transfer is not \
         measured yet.",
        settings.upgrades
    )
}
