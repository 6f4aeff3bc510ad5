//! gmemctl's QMP client against real QEMU (SeaBIOS only, no guest): fd
//! passing, status, memory hotplug, and a local migration with
//! `x-ignore-shared` between two QEMUs mapping the same memfd.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_tests::{e2e, ChildGuard};
use gmemctl::qmp::{MigrationStatus, QmpClient, QmpError};
use serde_json::json;

const STEP: Duration = Duration::from_secs(20);

/// A SeaBIOS-only q35 QEMU with QMP at `<dir>/<name>.qmp`, killed on drop.
struct Qemu {
    guard: ChildGuard,
    qmp_path: PathBuf,
    log_path: PathBuf,
}

impl Qemu {
    fn spawn(qemu: &Path, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "64M",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-name", name, "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if !extra.iter().any(|a| a.starts_with("q35")) {
            cmd.args(["-machine", "q35"]);
        }
        Qemu {
            guard: ChildGuard::spawn(name, cmd),
            qmp_path,
            log_path,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn connect(&mut self) -> QmpClient {
        QmpClient::connect(&self.qmp_path, STEP).unwrap_or_else(|e| {
            panic!(
                "connect to QEMU: {e}; exit: {:?}; log:\n{}",
                self.guard.child().try_wait(),
                self.log()
            )
        })
    }
}

/// Polls `query-status` until it equals `want` (bounded).
fn wait_status(q: &mut QmpClient, want: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let s = q.query_status().unwrap();
        if s == want || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("gmemd-qmp-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

/// Path under which another process (QEMU) can open our memfd.
fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

#[test]
fn qemu_status_and_add_fd() {
    let Some(qemu) = e2e::qemu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Qemu::spawn(&qemu, dir.path(), "vm", &[]);
    let mut q = vm.connect();
    assert_eq!(q.greeting().version.0, 10, "{:?}", q.greeting());
    assert_eq!(wait_status(&mut q, "running"), "running");

    let fd = memfd(1 << 20);
    let a = q.add_fd_opaque(fd.as_fd(), None, Some("gmem")).unwrap();
    let b = q.add_fd(fd.as_fd(), Some(a.fdset_id)).unwrap();
    assert_eq!(b.fdset_id, a.fdset_id);
    assert_ne!(a.fd, b.fd);
    let sets = q.query_fdsets().unwrap();
    let set = sets.iter().find(|s| s.fdset_id == a.fdset_id).unwrap();
    let fds: Vec<i64> = set.fds.iter().map(|f| f.fd).collect();
    assert!(fds.contains(&a.fd) && fds.contains(&b.fd), "{sets:?}");
    let opaque = set
        .fds
        .iter()
        .find(|f| f.fd == a.fd)
        .unwrap()
        .opaque
        .as_deref();
    assert_eq!(opaque, Some("gmem"));
    q.remove_fd(a.fdset_id, Some(b.fd)).unwrap();
    let sets = q.query_fdsets().unwrap();
    let set = sets.iter().find(|s| s.fdset_id == a.fdset_id).unwrap();
    assert_eq!(set.fds.len(), 1, "{sets:?}");

    q.getfd(fd.as_fd(), "ramfd").unwrap();
    q.closefd("ramfd").unwrap();
    let err = q.closefd("ramfd").unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");

    let err = q.execute("no-such-command", None).unwrap_err();
    assert!(
        matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
        "{err}"
    );
    assert!(q
        .human_monitor_command("info status")
        .unwrap()
        .contains("running"));
    q.stop().unwrap();
    assert_eq!(q.query_status().unwrap(), "paused");
    q.cont().unwrap();
    assert_eq!(q.query_status().unwrap(), "running");
    let evs: Vec<String> = q.take_events().into_iter().map(|e| e.event).collect();
    assert!(evs.contains(&"STOP".to_owned()), "{evs:?}");

    q.quit().unwrap();
    vm.guard.wait_exit(STEP);
}

#[test]
fn qemu_memory_hotplug() {
    let Some(qemu) = e2e::qemu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Qemu::spawn(&qemu, dir.path(), "vm", &["-m", "64M,slots=2,maxmem=1G"]);
    let mut q = vm.connect();
    assert!(q.query_memory_devices().unwrap().is_empty());

    let fd = memfd(128 << 20);
    q.object_add(json!({
        "qom-type": "memory-backend-file", "id": "mem1", "size": 128u64 << 20,
        "mem-path": proc_path(&fd), "share": true,
    }))
    .unwrap();
    q.device_add(json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"}))
        .unwrap();
    let devs = q.query_memory_devices().unwrap();
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(devs[0].kind, "dimm");
    assert_eq!(devs[0].id.as_deref(), Some("dimm1"));
    assert_eq!(devs[0].size, Some(128 << 20));
    assert_eq!(devs[0].memdev.as_deref(), Some("/objects/mem1"));
    assert!(devs[0].addr.unwrap() >= 1 << 32, "{devs:?}");

    // The backend is in use by the DIMM.
    let err = q.object_del("mem1").unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");
    // An unused backend can be deleted.
    q.object_add(json!({"qom-type": "memory-backend-ram", "id": "mem2", "size": 2u64 << 20}))
        .unwrap();
    q.object_del("mem2").unwrap();
    let err = q.device_del("nope").unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");
}

#[test]
fn qemu_live_migration_x_ignore_shared() {
    const RAM: u64 = 64 << 20;
    const MARK_AT: u64 = 32 << 20;
    const MARK: u64 = 0x6765_6d64_2d71_6d70;
    const FILL_FROM: u64 = 8 << 20;
    let Some(qemu) = e2e::qemu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ram = memfd(RAM);
    let backend = format!(
        "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
        proc_path(&ram)
    );
    let common = ["-object", &backend, "-machine", "q35,memory-backend=ram0"];
    let mut src_vm = Qemu::spawn(&qemu, dir.path(), "src", &common);
    let mut dst_args = common.to_vec();
    dst_args.extend(["-incoming", "defer"]);
    let mut dst_vm = Qemu::spawn(&qemu, dir.path(), "dst", &dst_args);
    let mut src = src_vm.connect();
    let mut dst = dst_vm.connect();
    assert_eq!(wait_status(&mut src, "running"), "running");
    assert_eq!(dst.query_status().unwrap(), "inmigrate");
    assert_eq!(dst.query_migrate().unwrap().status, MigrationStatus::None);

    for q in [&mut src, &mut dst] {
        q.migrate_set_capabilities(&[("x-ignore-shared", true)])
            .unwrap();
        let caps = q.query_migrate_capabilities().unwrap();
        assert!(
            caps.contains(&("x-ignore-shared".to_owned(), true)),
            "{caps:?}"
        );
        q.migrate_set_parameters(json!({"downtime-limit": 300}))
            .unwrap();
    }
    // Non-zero data in 32 MiB of guest RAM, written by the host through
    // the memfd while the source runs: a migration that copied guest RAM
    // would send >= 32 MiB (zero pages are almost free, so an idle
    // SeaBIOS guest alone would not tell). The destination must see the
    // marker without it being migrated.
    let chunk = vec![0xa5u8; 1 << 20];
    for off in (FILL_FROM..FILL_FROM + (32 << 20)).step_by(chunk.len()) {
        rustix::io::pwrite(&ram, &chunk, off).unwrap();
    }
    rustix::io::pwrite(&ram, &MARK.to_le_bytes(), MARK_AT).unwrap();

    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    dst.migrate_incoming(&uri).unwrap();
    let t0 = Instant::now();
    src.migrate(&uri).unwrap();
    let info = src.wait_migration(STEP).unwrap_or_else(|e| {
        panic!(
            "migration: {e}\nsrc log:\n{}\ndst log:\n{}",
            src_vm.log(),
            dst_vm.log()
        )
    });
    let wall = t0.elapsed();
    let dst_info = dst.wait_migration(STEP).unwrap();
    eprintln!(
        "migration: wall {wall:?}, total-time {:?} ms, downtime {:?} ms, setup {:?} ms, \
         ram transferred {:?} B (total {:?} B, normal pages {:?}, zero pages {:?}); dst {:?}",
        info.total_time_ms,
        info.downtime_ms,
        info.setup_time_ms,
        info.ram_transferred_bytes,
        info.ram_total_bytes,
        info.ram_normal_pages,
        info.ram_duplicate_pages,
        dst_info.status,
    );
    assert!(info.total_time_ms.is_some() && info.downtime_ms.is_some());
    let transferred = info.ram_transferred_bytes.unwrap();
    assert!(transferred < 4 << 20, "{transferred} bytes transferred");
    // Guest RAM itself was not counted in the RAM to migrate.
    assert!(info.ram_total_bytes.unwrap() < RAM, "{:?}", info.raw);

    assert_eq!(wait_status(&mut dst, "running"), "running");
    assert_eq!(src.query_status().unwrap(), "postmigrate");
    let out = dst
        .human_monitor_command(&format!("xp /1xg {MARK_AT:#x}"))
        .unwrap();
    assert!(out.contains(&format!("{MARK:#x}")), "{out}");

    src.quit().unwrap();
    dst.quit().unwrap();
    src_vm.guard.wait_exit(STEP);
    dst_vm.guard.wait_exit(STEP);
}
