//! Canned QMP exchanges and a fake server; the tests against real QEMU
//! are in `tests/qemu_qmp.rs`.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::commands::parse_reply;
use super::message::Message;
use super::*;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;

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
