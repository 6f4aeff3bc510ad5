//! Handoff time of `gmemctl upgrade` (local migration with `x-ignore-shared`
//! on gmemd memory) against QEMU's own copying migration of the same guest
//! without gmemd, for guests with most of their RAM filled.
//!
//! ```text
//! cargo bench -p gmem-tests --bench upgrade            # 1, 2 and 4 GiB
//! cargo bench -p gmem-tests --bench upgrade -- 1 2     # chosen sizes (GiB)
//! ```
//!
//! Each size boots two guests under TCG, both filling 3/4 of their RAM
//! with non-zero data (`gmem.fill`): one under `gmemctl launch`, upgraded
//! `UPGRADES` times while the other is paused, and one plain QEMU (`-m`,
//! anonymous RAM) migrated twice (to a fresh QEMU, and from that one to
//! another) with `max-bandwidth` raised from its 128 MiB/s default, after
//! the first one is gone.
//! Times are QEMU's own `query-migrate` figures (`total-time`, `downtime`)
//! plus the wall time from `migrate` to `completed` measured by the caller.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::guest::guest;
use gmem_tests::qemu::{gmemctl_json, LaunchSpec, SerialLog, Vm};
use gmem_tests::{e2e, ChildGuard, Daemon};
use gmemctl::qmp::QmpClient;
use serde_json::{json, Value};

/// Upgrades per size (the median is reported).
const UPGRADES: usize = 5;
/// Bound on boot + fill of the largest guest under TCG.
const FILL_TIMEOUT: Duration = Duration::from_secs(900);

/// One migration's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    total_ms: f64,
    downtime_ms: f64,
    wall_ms: f64,
    sent_bytes: f64,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn median(mut xs: Vec<Figures>) -> Figures {
    xs.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    xs[xs.len() / 2]
}

/// A QEMU without gmemd, for the copying-migration baseline.
struct PlainQemu {
    _guard: ChildGuard,
    qmp: QmpClient,
    serial: SerialLog,
}

impl PlainQemu {
    fn start(dir: &Path, tag: &str, gib: u64, params: &str, incoming: bool) -> PlainQemu {
        let qemu = e2e::qemu().expect("checked");
        let serial = dir.join(format!("{tag}.serial"));
        let qmp = dir.join(format!("{tag}.qmp"));
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg", "-machine", "q35", "-m", &format!("{gib}G")])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none", "-chardev"])
            .arg(format!("file,id=ser0,path={},append=on", serial.display()))
            .args(["-serial", "chardev:ser0", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(guest().boot_args(params))
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
}

/// Copying migration of `src` to a fresh plain QEMU, which becomes `src`.
fn copy_migration(dir: &Path, tag: &str, gib: u64, params: &str, src: &mut PlainQemu) -> Figures {
    let mut dst = PlainQemu::start(dir, tag, gib, params, true);
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
    let info = loop {
        let info = src
            .qmp
            .execute("query-migrate", None)
            .expect("query-migrate");
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => panic!("copying migration failed: {info}"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    // The guest runs on at the destination.
    let last = src.serial.last_tick().map_or(0, |t| t.n);
    dst.serial
        .wait_tick(last, Duration::from_secs(60), |_| true);
    eprintln!(
        "  copying migration: {wall_ms:.0} ms, {} Mbit/s, {} dirty syncs",
        info["ram"]["mbps"], info["ram"]["dirty-sync-count"]
    );
    std::mem::swap(src, &mut dst);
    Figures {
        total_ms: num(&info["total-time"]),
        downtime_ms: num(&info["downtime"]),
        wall_ms,
        sent_bytes: num(&info["ram"]["transferred"]),
    }
}

fn upgrade(daemon: &Daemon, vm: &str) -> Figures {
    let r = gmemctl_json(daemon, &["upgrade", vm]);
    Figures {
        total_ms: num(&r["total_time_ms"]),
        downtime_ms: num(&r["downtime_ms"]),
        wall_ms: num(&r["handoff_ms"]),
        sent_bytes: num(&r["ram_transferred_bytes"]),
    }
}

fn mib(bytes: f64) -> String {
    if bytes < 1024.0 * 1024.0 {
        format!("{:.0} KiB", bytes / 1024.0)
    } else {
        format!("{:.0} MiB", bytes / 1024.0 / 1024.0)
    }
}

fn main() {
    if e2e::qemu().is_none() {
        return;
    }
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 2, 4]
    } else {
        sizes
    };
    let daemon = Daemon::start();
    let dir = tempfile::Builder::new()
        .prefix("gmem-bench")
        .tempdir()
        .expect("temp dir");
    let mut rows = Vec::new();
    for gib in sizes {
        let fill = gib * 1024 * 3 / 4;
        let params = format!("gmem.fill={fill} gmem.tick=1");
        eprintln!("{gib} GiB: booting both guests and filling {fill} MiB each...");
        let t = Instant::now();
        let vm_name = format!("bench-{gib}g");
        let vm = Vm::launch(
            &daemon,
            dir.path(),
            &vm_name,
            &LaunchSpec::new(&format!("{gib}G"), &params),
        );
        let mut plain = PlainQemu::start(dir.path(), &format!("plain-{gib}g"), gib, &params, false);
        for serial in [&vm.serial, &plain.serial] {
            let text = serial.wait_for("GMEM-GUEST: filled", FILL_TIMEOUT);
            assert!(!text.contains("GMEM-GUEST: error"), "{text}");
        }
        eprintln!("  filled in {:.0} s", t.elapsed().as_secs_f64());

        // Measure each side alone on the machine: the other guest paused
        // or gone.
        plain.qmp.execute("stop", None).expect("stop");
        let upgrades: Vec<Figures> = (0..UPGRADES).map(|_| upgrade(&daemon, &vm_name)).collect();
        let last = vm.serial.last_tick().map_or(0, |t| t.n);
        vm.serial.wait_tick(last, Duration::from_secs(60), |_| true);
        eprintln!("  gmemctl upgrade x{UPGRADES}: {upgrades:?}");
        drop(vm);
        plain.qmp.execute("cont", None).expect("cont");
        // The first migration of a freshly filled TCG guest is several
        // times slower than the next one; report the faster of two (there
        // and on), the baseline least favourable to gmemd.
        let copies: Vec<Figures> = (0..2)
            .map(|n| {
                copy_migration(
                    dir.path(),
                    &format!("plain-{gib}g-{n}"),
                    gib,
                    &params,
                    &mut plain,
                )
            })
            .collect();
        eprintln!("  copying migrations: {copies:?}");
        let copy = copies
            .into_iter()
            .min_by(|a, b| a.total_ms.total_cmp(&b.total_ms))
            .expect("two runs");
        rows.push((gib, fill, median(upgrades), copy));
        drop(plain);
        // The VM's RAM is in the VM's namespace (an operator names it so).
        let file = gmem_tests::vm_file(&vm_name, &format!("{vm_name}.ram"));
        gmem_tests::wait_until(Duration::from_secs(30), "the VM's lease to end", || {
            daemon.control().destroy_in(&file).ok()
        });
    }

    println!();
    println!(
        "| guest RAM (filled) | gmemd upgrade: total / downtime / handoff (wall) / RAM sent \
         | QEMU copying migration: total / downtime / RAM sent | speed-up (total) |"
    );
    println!("|---|---|---|---|");
    for (gib, fill, up, copy) in rows {
        println!(
            "| {gib} GiB ({fill} MiB) | {:.0} ms / {:.0} ms / {:.1} ms / {} | {:.0} ms / {:.0} ms / {} | {:.0}x |",
            up.total_ms,
            up.downtime_ms,
            up.wall_ms,
            mib(up.sent_bytes),
            copy.total_ms,
            copy.downtime_ms,
            mib(copy.sent_bytes),
            copy.total_ms / up.total_ms.max(1.0)
        );
    }
    println!(
        "\ngmemd upgrade: median of {UPGRADES}; copying migration: the faster of 2 \
         (max-bandwidth 64 GiB/s). QEMU 10.0.2 figures from query-migrate (total-time, \
         downtime, ram.transferred); wall = migrate to completed as seen over QMP; TCG, 2 cores."
    );
}
