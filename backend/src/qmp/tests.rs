//! Canned QMP exchanges, a fake server, and real QEMU.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::parse_reply;
use super::message::Message;
use super::*;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};

// ----- canned replies (captured from QEMU 10.0.2) --------------------

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;

#[test]
fn parse_greeting() {
    let g = QmpGreeting::from_value(&serde_json::from_str(GREETING).unwrap()).unwrap();
    assert_eq!(g.version, (10, 0, 2));
    assert_eq!(g.capabilities, vec!["oob".to_owned()]);
    assert!(g.package.contains("10.0.2"));
    let err = QmpGreeting::from_value(&json!({"return": {}})).unwrap_err();
    assert!(matches!(err, QmpError::Greeting(_)), "{err}");
}

#[test]
fn parse_messages() {
    let ev = r#"{"timestamp": {"seconds": 1732680000, "microseconds": 123456}, "event": "STOP"}"#;
    let m = Message::from_value(serde_json::from_str(ev).unwrap()).unwrap();
    assert_eq!(
        m,
        Message::Event(QmpEvent {
            event: "STOP".into(),
            data: Value::Null,
            timestamp: Some((1_732_680_000, 123_456)),
        })
    );
    let ev = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "setup"}}"#;
    let Message::Event(e) = Message::from_value(serde_json::from_str(ev).unwrap()).unwrap() else {
        panic!("not an event")
    };
    assert_eq!(e.data["status"], "setup");

    let m = Message::from_value(json!({"return": {}, "id": 7})).unwrap();
    assert_eq!(
        m,
        Message::Return {
            id: Some(json!(7)),
            value: json!({})
        }
    );
    let m = Message::from_value(json!({"id": 3, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}})).unwrap();
    assert_eq!(
        m,
        Message::Error {
            id: Some(json!(3)),
            class: "CommandNotFound".into(),
            desc: "The command foo has not been found".into()
        }
    );
    assert!(matches!(
        Message::from_value(json!({"foo": 1})),
        Err(QmpError::Protocol(_))
    ));
    assert!(matches!(
        Message::from_value(json!([1])),
        Err(QmpError::Protocol(_))
    ));
    assert!(QmpClient::id_matches(None, 5));
    assert!(QmpClient::id_matches(Some(&json!(5)), 5));
    assert!(!QmpClient::id_matches(Some(&json!(4)), 5));
}

#[test]
fn parse_migration_info() {
    // Source side after an x-ignore-shared migration, QEMU 10.0.2.
    let v: Value = serde_json::from_str(
        r#"{"downtime":2,"ram":{"dirty-pages-rate":0,"dirty-sync-count":2,
            "dirty-sync-missed-zero-copy":0,"downtime-bytes":0,"duplicate":78,
            "mbps":232.9696,"multifd-bytes":0,"normal":52,"normal-bytes":212992,
            "page-size":4096,"pages-per-second":0,"postcopy-bytes":0,
            "postcopy-requests":0,"precopy-bytes":214195,"remaining":0,
            "total":532480,"transferred":291212},
            "setup-time":1,"status":"completed","total-time":11}"#,
    )
    .unwrap();
    let i = MigrationInfo::from_value(&v);
    assert_eq!(i.status, MigrationStatus::Completed);
    assert!(i.status.is_terminal());
    assert_eq!(i.total_time_ms, Some(11));
    assert_eq!(i.downtime_ms, Some(2));
    assert_eq!(i.setup_time_ms, Some(1));
    assert_eq!(i.expected_downtime_ms, None);
    assert_eq!(i.ram_transferred_bytes, Some(291_212));
    assert_eq!(i.ram_total_bytes, Some(532_480));
    assert_eq!(i.ram_remaining_bytes, Some(0));
    assert_eq!(i.ram_duplicate_pages, Some(78));
    assert_eq!(i.ram_normal_pages, Some(52));
    assert_eq!(i.ram_normal_bytes, Some(212_992));
    assert_eq!(i.ram_dirty_sync_count, Some(2));
    assert_eq!(i.ram_mbps, Some(232.9696));
    assert_eq!(i.raw["ram"]["page-size"], 4096);

    // The destination side only reports the status.
    let i = MigrationInfo::from_value(&json!({"status": "completed"}));
    assert_eq!(i.status, MigrationStatus::Completed);
    assert_eq!(i.total_time_ms, None);
    assert_eq!(i.ram_transferred_bytes, None);

    // Mid-migration (source), with expected-downtime.
    let i = MigrationInfo::from_value(&json!({"status": "active", "expected-downtime": 300,
        "setup-time": 2, "total-time": 40, "ram": {"transferred": 1000, "remaining": 5}}));
    assert_eq!(i.status, MigrationStatus::Active);
    assert_eq!(i.expected_downtime_ms, Some(300));
    assert_eq!(i.downtime_ms, None);
    assert_eq!(i.ram_remaining_bytes, Some(5));

    // Before any migration QEMU returns {}.
    let i = MigrationInfo::from_value(&json!({}));
    assert_eq!(i.status, MigrationStatus::None);
    assert!(!i.status.is_terminal());
    assert_eq!(i.ram_transferred_bytes, None);

    let i = MigrationInfo::from_value(
        &json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}),
    );
    assert_eq!(i.status, MigrationStatus::Failed);
    assert_eq!(
        i.error_desc.as_deref(),
        Some("Unable to write to socket: Broken pipe")
    );

    for s in [
        "none",
        "setup",
        "active",
        "pre-switchover",
        "device",
        "wait-unplug",
        "postcopy-active",
        "postcopy-paused",
        "cancelling",
        "cancelled",
        "completed",
        "failed",
        "colo",
    ] {
        assert_eq!(MigrationStatus::parse(s).as_str(), s);
    }
    assert_eq!(
        MigrationStatus::parse("colo"),
        MigrationStatus::Other("colo".into())
    );
    let e = QmpError::MigrationFailed {
        status: MigrationStatus::Failed,
        desc: Some("boom".into()),
    };
    assert_eq!(e.to_string(), "migration failed: boom");
}

#[test]
fn parse_fd_and_memory_device_replies() {
    let a: AddFdInfo = parse_reply("add-fd", json!({"fdset-id": 1, "fd": 25})).unwrap();
    assert_eq!(
        a,
        AddFdInfo {
            fdset_id: 1,
            fd: 25
        }
    );
    let s: Vec<FdsetInfo> = parse_reply(
        "query-fdsets",
        json!([{"fds": [{"fd": 25, "opaque": "ram"}, {"fd": 26}], "fdset-id": 1}]),
    )
    .unwrap();
    assert_eq!(s[0].fdset_id, 1);
    assert_eq!(s[0].fds[0].opaque.as_deref(), Some("ram"));
    assert_eq!(s[0].fds[1].opaque, None);
    assert!(matches!(
        parse_reply::<AddFdInfo>("add-fd", json!({})),
        Err(QmpError::Protocol(_))
    ));

    let dimm = MemoryDeviceInfo::from_value(&json!({"type": "dimm", "data": {
        "slot": 0, "node": 0, "addr": 4294967296u64, "memdev": "/objects/mem1",
        "id": "dimm1", "hotpluggable": true, "hotplugged": true, "size": 134217728}}))
    .unwrap();
    assert_eq!(dimm.kind, "dimm");
    assert_eq!(dimm.id.as_deref(), Some("dimm1"));
    assert_eq!(dimm.addr, Some(1 << 32));
    assert_eq!(dimm.size, Some(128 << 20));
    assert_eq!(dimm.memdev.as_deref(), Some("/objects/mem1"));
    let vmem = MemoryDeviceInfo::from_value(&json!({"type": "virtio-mem", "data": {
        "memaddr": 8589934592u64, "requested-size": 0, "size": 0, "max-size": 1073741824,
        "block-size": 2097152, "node": 0, "memdev": "/objects/vm0", "id": "vm0"}}))
    .unwrap();
    assert_eq!(vmem.addr, Some(8 << 30));
    assert_eq!(vmem.data["max-size"], 1 << 30);
    assert!(MemoryDeviceInfo::from_value(&json!({"data": {}})).is_err());
}

// ----- fake QMP server over a socketpair ------------------------------

/// Server side of a fake QMP session.
struct FakeQemu {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl FakeQemu {
    fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
    fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
    /// Expects `command`, answers with `reply` merged with the request id.
    fn expect(&mut self, command: &str, mut reply: Value) -> Value {
        let req = self.recv();
        assert_eq!(req["execute"], command, "{req}");
        reply["id"] = req["id"].clone();
        self.send(&reply.to_string());
        req
    }
    fn handshake(&mut self) {
        self.send(GREETING);
        self.expect("qmp_capabilities", json!({"return": {}}));
    }
}

fn fake_session(
    server: impl FnOnce(FakeQemu) + Send + 'static,
) -> (QmpClient, thread::JoinHandle<()>) {
    let (c, s) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut f = FakeQemu::new(s);
        f.handshake();
        server(f);
    });
    let client = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap();
    (client, h)
}

#[test]
fn fake_execute_events_and_errors() {
    let (mut q, h) = fake_session(|mut f| {
        // An event before the reply, and a stale reply with another id.
        let req = f.recv();
        assert_eq!(req["execute"], "query-status");
        f.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#);
        f.send(r#"{"return": {"status": "stale"}, "id": 999}"#);
        f.send(
            &json!({"return": {"status": "running", "running": true}, "id": req["id"]}).to_string(),
        );
        let req = f.expect(
            "device_del",
            json!({"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}),
        );
        assert_eq!(req["arguments"], json!({"id": "nope"}));
        let req = f.expect("migrate-set-capabilities", json!({"return": {}}));
        assert_eq!(
            req["arguments"],
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
        );
        // An error without id (QEMU's reply to unparsable input).
        f.recv();
        f.send(r#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#);
        f.send(r#"{"event": "DEVICE_DELETED", "data": {"device": "dimm1"}, "timestamp": {"seconds": 3, "microseconds": 4}}"#);
        f.send(r#"{"event": "SHUTDOWN", "data": {"guest": false}}"#);
        f.expect("quit", json!({"return": {}}));
    });
    assert_eq!(q.greeting().version, (10, 0, 2));
    assert_eq!(q.query_status().unwrap(), "running");
    let evs = q.take_events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event, "RESUME");
    assert!(q.take_events().is_empty());

    let err = q.device_del("nope").unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "device_del");
            assert_eq!(class, "DeviceNotFound");
            assert_eq!(desc, "Device 'nope' not found");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "QMP command \"device_del\" failed: DeviceNotFound: Device 'nope' not found"
    );
    q.migrate_set_capabilities(&[("x-ignore-shared", true)])
        .unwrap();
    assert!(matches!(
        q.execute("stop", None),
        Err(QmpError::Command { ref class, .. }) if class == "GenericError"
    ));
    let ev = q.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap();
    assert_eq!(ev.data["guest"], false);
    assert_eq!(ev.timestamp, None);
    // DEVICE_DELETED arrived first and stays queued.
    let ev = q
        .wait_event("DEVICE_DELETED", Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev.data["device"], "dimm1");
    q.quit().unwrap();
    assert!(matches!(q.query_status(), Err(QmpError::Closed)));
    h.join().unwrap();
}

#[test]
fn fake_timeout_and_closed() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (mut q, h) = fake_session(move |mut f| {
        f.recv(); // never answered
        f.send(r#"{"event": "STOP"}"#);
        rx.recv().unwrap();
        // The late reply to the first command must be skipped.
        f.send(r#"{"return": {"status": "late"}, "id": 2}"#);
        f.expect("query-status", json!({"return": {"status": "paused"}}));
        f.recv();
        // Drop: connection closed without a reply.
    });
    q.set_timeout(Duration::from_millis(200));
    let t0 = Instant::now();
    let err = q.query_status().unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(q.take_events()[0].event, "STOP");
    tx.send(()).unwrap();
    q.set_timeout(Duration::from_secs(5));
    assert_eq!(q.query_status().unwrap(), "paused");
    assert!(matches!(q.query_status(), Err(QmpError::Closed)));
    assert!(matches!(q.cont(), Err(QmpError::Closed)));
    let err = q
        .wait_event("NEVER", Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err}");
    h.join().unwrap();
}

#[test]
fn fake_bad_greeting_and_garbage() {
    let (c, s) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut f = FakeQemu::new(s);
        f.send(r#"{"hello": 1}"#);
    });
    let err = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, QmpError::Greeting(_)), "{err}");
    h.join().unwrap();

    let (c, s) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || FakeQemu::new(s).send("{not json"));
    let err = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, QmpError::Json { .. }), "{err}");
    h.join().unwrap();

    // Silent peer: the greeting read times out.
    let (c, _s) = UnixStream::pair().unwrap();
    let t0 = Instant::now();
    let err = QmpClient::from_stream(c, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn fake_execute_with_fd_passes_scm_rights() {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let (c, s) = UnixStream::pair().unwrap();
    let file = tempfile::tempfile().unwrap();
    let want = rustix::fs::fstat(&file).unwrap();
    let h = thread::spawn(move || -> (Value, OwnedFd) {
        let mut f = FakeQemu::new(s.try_clone().unwrap());
        f.handshake();
        // Read the add-fd command with its ancillary data, byte-exact
        // (the BufReader has nothing buffered after the handshake).
        let mut buf = vec![0u8; 4096];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let r = recvmsg(&s, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC).unwrap();
        let mut got = None;
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                got = fds.into_iter().next();
            }
        }
        let req: Value = serde_json::from_slice(buf[..r.bytes].trim_ascii()).unwrap();
        f.send(&json!({"return": {"fdset-id": 3, "fd": 42}, "id": req["id"]}).to_string());
        (req, got.expect("no fd received"))
    });
    let mut q = QmpClient::from_stream(c, Duration::from_secs(5)).unwrap();
    let info = q
        .add_fd_opaque(file.as_fd(), Some(3), Some("guest-ram"))
        .unwrap();
    assert_eq!(
        info,
        AddFdInfo {
            fdset_id: 3,
            fd: 42
        }
    );
    let (req, fd) = h.join().unwrap();
    assert_eq!(req["execute"], "add-fd");
    assert_eq!(
        req["arguments"],
        json!({"fdset-id": 3, "opaque": "guest-ram"})
    );
    let got = rustix::fs::fstat(&fd).unwrap();
    assert_eq!((got.st_dev, got.st_ino), (want.st_dev, want.st_ino));
}

#[test]
fn connect_waits_for_socket_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let p = path.clone();
    let h = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        let l = UnixListener::bind(&p).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut f = FakeQemu::new(s);
        f.handshake();
        f.expect("query-status", json!({"return": {"status": "prelaunch"}}));
    });
    let mut q = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(q.query_status().unwrap(), "prelaunch");
    h.join().unwrap();

    let t0 = Instant::now();
    let err =
        QmpClient::connect(dir.path().join("absent.sock"), Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("absent.sock"), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

// ----- real QEMU ---------------------------------------------------------

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const STEP: Duration = Duration::from_secs(20);

/// False (test skipped) when QEMU is missing, unless GMEM_E2E=require.
fn have_qemu() -> bool {
    if Path::new(QEMU).exists() {
        return true;
    }
    if std::env::var("GMEM_E2E").as_deref() == Ok("require") {
        panic!("{QEMU} is missing and GMEM_E2E=require");
    }
    eprintln!("skipping: {QEMU} not found");
    false
}

/// A QEMU child that is killed and reaped on drop.
struct Qemu {
    child: Child,
    qmp_path: PathBuf,
    log_path: PathBuf,
}

impl Qemu {
    /// SeaBIOS-only q35 guest with QMP at `<dir>/<name>.qmp`.
    fn spawn(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let log_path = dir.join(format!("{name}.log"));
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(QEMU);
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
        let child = cmd.spawn().unwrap();
        Self {
            child,
            qmp_path,
            log_path,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn connect(&mut self) -> QmpClient {
        match QmpClient::connect(&self.qmp_path, STEP) {
            Ok(q) => q,
            Err(e) => panic!(
                "connect to QEMU: {e}; exit: {:?}; log:\n{}",
                self.child.try_wait(),
                self.log()
            ),
        }
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // SIGKILL cannot be blocked, so the wait is short.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `query-status` until it equals `want` (bounded).
fn wait_status(q: &mut QmpClient, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s = q.query_status().unwrap();
        if s == want || Instant::now() >= deadline {
            return s;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("gmemd-qmp-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

/// Path under which another process (QEMU) can open our memfd. Avoids
/// having to clear CLOEXEC and inherit the fd in the child.
fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

#[test]
fn qemu_status_and_add_fd() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Qemu::spawn(dir.path(), "vm", &[]);
    let mut q = vm.connect();
    assert_eq!(q.greeting().version.0, 10, "{:?}", q.greeting());
    assert_eq!(wait_status(&mut q, "running", STEP), "running");

    let fd = memfd(1 << 20);
    let a = q.add_fd_opaque(fd.as_fd(), None, Some("gmem")).unwrap();
    let b = q.add_fd(fd.as_fd(), Some(a.fdset_id)).unwrap();
    assert_eq!(b.fdset_id, a.fdset_id);
    assert_ne!(a.fd, b.fd);
    let sets = q.query_fdsets().unwrap();
    let set = sets.iter().find(|s| s.fdset_id == a.fdset_id).unwrap();
    let fds: Vec<i64> = set.fds.iter().map(|f| f.fd).collect();
    assert!(fds.contains(&a.fd) && fds.contains(&b.fd), "{sets:?}");
    assert_eq!(
        set.fds
            .iter()
            .find(|f| f.fd == a.fd)
            .unwrap()
            .opaque
            .as_deref(),
        Some("gmem")
    );
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
    q.stop().unwrap();
    assert_eq!(q.query_status().unwrap(), "paused");
    q.cont().unwrap();
    assert_eq!(q.query_status().unwrap(), "running");
    let evs: Vec<String> = q.take_events().into_iter().map(|e| e.event).collect();
    assert!(evs.contains(&"STOP".to_owned()), "{evs:?}");

    q.quit().unwrap();
    assert!(vm.wait_exit(STEP), "QEMU did not exit after quit");
}

#[test]
fn qemu_memory_hotplug() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Qemu::spawn(dir.path(), "vm", &["-m", "64M,slots=2,maxmem=1G"]);
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
    if !have_qemu() {
        return;
    }
    const RAM: u64 = 64 << 20;
    const MARK_AT: u64 = 32 << 20;
    const MARK: u64 = 0x6765_6d64_2d71_6d70;
    const FILL_FROM: u64 = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let ram = memfd(RAM);
    let backend = format!(
        "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
        proc_path(&ram)
    );
    let common = ["-object", &backend, "-machine", "q35,memory-backend=ram0"];
    let mut src_vm = Qemu::spawn(dir.path(), "src", &common);
    let mut dst_args = common.to_vec();
    dst_args.extend(["-incoming", "defer"]);
    let mut dst_vm = Qemu::spawn(dir.path(), "dst", &dst_args);
    let mut src = src_vm.connect();
    let mut dst = dst_vm.connect();
    assert_eq!(wait_status(&mut src, "running", STEP), "running");
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
    let info = match src.wait_migration(STEP) {
        Ok(i) => i,
        Err(e) => panic!(
            "migration: {e}\nsrc log:\n{}\ndst log:\n{}",
            src_vm.log(),
            dst_vm.log()
        ),
    };
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
    eprintln!(
        "query-migrate (src): {}\nquery-migrate (dst): {}",
        info.raw, dst_info.raw
    );
    assert!(info.total_time_ms.is_some() && info.downtime_ms.is_some());
    let transferred = info.ram_transferred_bytes.unwrap();
    assert!(transferred < 4 << 20, "{transferred} bytes transferred");
    // Guest RAM itself was not counted in the RAM to migrate.
    assert!(info.ram_total_bytes.unwrap() < RAM, "{:?}", info.raw);

    assert_eq!(wait_status(&mut dst, "running", STEP), "running");
    assert_eq!(src.query_status().unwrap(), "postmigrate");
    let out = dst
        .execute(
            "human-monitor-command",
            Some(json!({"command-line": format!("xp /1xg {MARK_AT:#x}")})),
        )
        .unwrap();
    let out = out.as_str().unwrap().to_owned();
    assert!(out.contains(&format!("{MARK:#x}")), "{out}");

    src.quit().unwrap();
    dst.quit().unwrap();
    assert!(src_vm.wait_exit(STEP) && dst_vm.wait_exit(STEP));
}
