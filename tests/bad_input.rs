//! DESIGN invariant 9: bad input gets a clear error reply or a closed
//! connection, changes nothing, and the daemon keeps serving everyone else.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use gmem_protocol::conn::{send_message, ConnError, FrameReader};
use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{
    Features, FileRef, Header, Hello, MemoryKind, Reply, Request, RequestBody, HEADER_SIZE,
};
use gmem_tests::{bin, name, vm, Daemon};
use rustix::io::Errno;

fn connect(daemon: &Daemon) -> UnixStream {
    let stream = UnixStream::connect(daemon.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn send(stream: &UnixStream, code: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
    let header = Header {
        code,
        is_reply: false,
        size: u32::try_from(payload.len()).unwrap(),
    };
    send_message(stream.as_fd(), header, payload, fds).unwrap();
}

fn reply(stream: &UnixStream) -> Reply {
    let frame = FrameReader::new()
        .read_frame(stream.as_fd())
        .unwrap()
        .expect("blocking read");
    assert!(frame.header.is_reply);
    assert!(frame.fds.is_empty() || Reply::decode(&frame.payload).unwrap().status == 0);
    Reply::decode(&frame.payload).unwrap()
}

fn hello(stream: &UnixStream, vm_name: &str) {
    let body = RequestBody::Hello(Hello {
        features: Features::all(),
        vm: Some(vm(vm_name)),
    });
    send(stream, Request::Hello.code(), &body.encode(), &[]);
    assert_eq!(reply(stream).status, 0);
}

fn assert_refused(reply: &Reply, errno: Errno, text: &str) {
    assert_eq!(reply.status, -errno.raw_os_error(), "{reply:?}");
    assert!(reply.text.contains(text), "{:?} lacks {text:?}", reply.text);
}

/// The connection was closed by gmemd without a reply.
fn assert_closed(stream: &UnixStream) {
    let err = FrameReader::new().read_frame(stream.as_fd()).unwrap_err();
    assert!(
        matches!(err, ConnError::Closed) || err.is_hangup(),
        "expected a closed connection, got {err:?}"
    );
}

/// gmemd still runs and answers a well-behaved client; returns once that
/// client's lease is gone again, so fd counts taken afterwards are settled.
fn still_serving(daemon: &mut Daemon) {
    assert!(daemon.is_running());
    let mut client = daemon.lease(vm("well-behaved"));
    client
        .create_or_open(&name("probe"), 4096, MemoryKind::Memfd)
        .unwrap();
    assert!(client.files().is_ok());
    drop(client);
    gmem_tests::wait_until(Duration::from_secs(10), "the probe lease to end", || {
        let leases = daemon.control().leases().unwrap();
        (!leases.iter().any(|l| l.vm.name.as_str() == "well-behaved")).then_some(())
    });
}

fn memfd() -> OwnedFd {
    rustix::fs::memfd_create("junk", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

#[test]
fn truncated_header_then_close_or_stall() {
    let mut daemon = Daemon::start();
    let mut stalled = connect(&daemon);
    stalled.write_all(&[1, 0, 0, 0, 1]).unwrap(); // 5 of 12 header bytes, then silence
    {
        let mut gone = connect(&daemon);
        gone.write_all(&[1, 0, 0]).unwrap();
    } // closed mid-header
    still_serving(&mut daemon); // the stalled client holds nothing up
    drop(stalled);
    still_serving(&mut daemon);
}

#[test]
fn oversized_and_malformed_headers_close_the_connection() {
    let mut daemon = Daemon::start();
    for (what, bytes) in [
        (
            "size over max",
            Header::request(Request::Status, 8)
                .to_bytes()
                .map(|b| b)
                .tap_size(1 << 20),
        ),
        (
            "bad version",
            Header::request(Request::Status, 8).to_bytes().tap_flags(2),
        ),
        (
            "reserved flags",
            Header::request(Request::Status, 8)
                .to_bytes()
                .tap_flags(1 | 0x100),
        ),
    ] {
        let mut stream = connect(&daemon);
        stream.write_all(&bytes).unwrap();
        assert_closed(&stream);
        assert!(daemon.log().contains("protocol error"), "{what}");
        still_serving(&mut daemon);
    }
}

trait TapHeader {
    fn tap_size(self, size: u32) -> Self;
    fn tap_flags(self, flags: u32) -> Self;
}

impl TapHeader for [u8; HEADER_SIZE] {
    fn tap_size(mut self, size: u32) -> Self {
        self[8..12].copy_from_slice(&size.to_le_bytes());
        self
    }
    fn tap_flags(mut self, flags: u32) -> Self {
        self[4..8].copy_from_slice(&flags.to_le_bytes());
        self
    }
}

#[test]
fn unknown_codes_early_requests_and_garbage_get_error_replies() {
    let mut daemon = Daemon::start();
    let stream = connect(&daemon);
    // Nothing but HELLO before HELLO.
    let open = RequestBody::Open(FileRef::own(name("x")));
    send(&stream, Request::Open.code(), &open.encode(), &[]);
    assert_refused(&reply(&stream), Errno::PROTO, "before HELLO");
    hello(&stream, "vm-a");
    // A second HELLO.
    let again = RequestBody::Hello(Hello {
        features: Features::empty(),
        vm: None,
    });
    send(&stream, Request::Hello.code(), &again.encode(), &[]);
    assert_refused(&reply(&stream), Errno::PROTO, "already");
    // Unknown request codes.
    for code in [0, 16, 0x7fff_ffff, u32::MAX] {
        send(&stream, code, &[1, 2, 3], &[]);
        assert_refused(&reply(&stream), Errno::OPNOTSUPP, "unknown request code");
    }
    // Wrong payload lengths.
    send(&stream, Request::Bind.code(), &[0; 95], &[]);
    assert_refused(&reply(&stream), Errno::INVAL, "must be 96 bytes");
    // BIND with garbage: random bytes (bad name), then wild numbers.
    let mut garbage = [0u8; 96];
    let mut x = 0x1234_5678_9abc_def0u64;
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    send(&stream, Request::Bind.code(), &garbage, &[]);
    assert_refused(&reply(&stream), Errno::INVAL, "");
    let wild = RequestBody::Bind(gmem_protocol::BindRequest::new(
        u32::MAX,
        GuestAddress(u64::MAX),
        name("probe"),
        u64::MAX,
        u64::MAX,
    ));
    send(&stream, Request::Bind.code(), &wild.encode(), &[]);
    assert!(reply(&stream).status < 0);
    // The REPLY flag on a request.
    let status = RequestBody::Status(gmem_protocol::wire::StatusQuery {
        section: gmem_protocol::wire::StatusSection::Files,
        start: 0,
    });
    let payload = status.encode();
    send_message(
        stream.as_fd(),
        Header::reply(Request::Status.code(), payload.len()),
        &payload,
        &[],
    )
    .unwrap();
    assert_refused(&reply(&stream), Errno::INVAL, "REPLY flag");
    // The same connection still works for a good request.
    send(&stream, Request::Status.code(), &payload, &[]);
    assert_eq!(reply(&stream).status, 0);
    still_serving(&mut daemon);
    // Nothing was created or bound by any of it.
    let files = daemon.control().files().unwrap();
    assert!(files.iter().all(|f| f.bindings.is_empty()));
}

#[test]
fn unwanted_fds_are_closed_and_missing_fds_refused() {
    let mut daemon = Daemon::start();
    let stream = connect(&daemon);
    hello(&stream, "vm-a");
    let status = RequestBody::Status(gmem_protocol::wire::StatusQuery {
        section: gmem_protocol::wire::StatusSection::Leases,
        start: 0,
    })
    .encode();
    let junk = memfd();
    // Warm up, so the probe file and lazily opened fds don't count as leaks.
    send(&stream, Request::Status.code(), &status, &[junk.as_fd()]);
    reply(&stream);
    still_serving(&mut daemon);
    let before = daemon.fd_count();
    for _ in 0..1000 {
        send(
            &stream,
            Request::Status.code(),
            &status,
            &[junk.as_fd(), junk.as_fd()],
        );
        assert_refused(&reply(&stream), Errno::BADF, "carries exactly 0 fd");
    }
    assert_fds_flat(&daemon, before);
    // DEPOSIT without its fd.
    let deposit = RequestBody::Deposit(gmem_protocol::wire::DepositRequest {
        name: name("dep"),
        kind: MemoryKind::Memfd,
    });
    send(&stream, Request::Deposit.code(), &deposit.encode(), &[]);
    assert_refused(&reply(&stream), Errno::BADF, "exactly 1 fd");
    // DEPOSIT of something that is not a memfd.
    let file: OwnedFd = tempfile::tempfile().unwrap().into();
    send(
        &stream,
        Request::Deposit.code(),
        &deposit.encode(),
        &[file.as_fd()],
    );
    assert_refused(&reply(&stream), Errno::INVAL, "not a memfd");
    still_serving(&mut daemon);
    assert_fds_flat(&daemon, before);
}

/// gmemd's fd count settles back to `before` (sessions closing race the
/// count, leaked fds never go) and none of the junk memfds is among them.
fn assert_fds_flat(daemon: &Daemon, before: usize) {
    gmem_tests::wait_until(Duration::from_secs(5), "gmemd's fd count to settle", || {
        (daemon.fd_count() <= before).then_some(())
    });
    let targets = daemon.fd_targets();
    assert!(
        !targets.iter().any(|t| t.contains("memfd:junk")),
        "gmemd kept fds it was sent: {targets:?}"
    );
}

#[test]
fn more_fds_than_allowed_close_the_connection() {
    let mut daemon = Daemon::start();
    let stream = connect(&daemon);
    hello(&stream, "vm-a");
    let files: Vec<OwnedFd> = (0..9).map(|_| memfd()).collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    still_serving(&mut daemon);
    let before = daemon.fd_count();
    // The sender side refuses to build such a message, so write it by hand.
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(9))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    let bytes = Header::request(Request::Status, 0).to_bytes();
    rustix::net::sendmsg(
        &stream,
        &[std::io::IoSlice::new(&bytes)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_closed(&stream);
    still_serving(&mut daemon);
    assert_fds_flat(&daemon, before);
}

#[test]
fn a_uid_that_is_not_allowed_gets_a_clear_error() {
    let mut daemon = Daemon::start();
    assert_eq!(
        rustix::process::getuid().as_raw(),
        0,
        "the test runs as root to switch uid"
    );
    // A client process running as nobody.
    let out = Command::new(bin("gmem-test-client"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--vm", "intruder", "--create", "x:4096"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("uid 65534 is not allowed"), "{stderr}");
    assert!(
        stderr.contains(&format!("errno {}", Errno::ACCESS.raw_os_error())),
        "{stderr}"
    );
    assert!(daemon.control().files().unwrap().is_empty());
    still_serving(&mut daemon);
}

#[test]
fn a_client_that_never_reads_its_replies_stalls_nobody() {
    let mut daemon = Daemon::start();
    let mut stream = connect(&daemon);
    hello(&stream, "vm-flood");
    let status = RequestBody::Status(gmem_protocol::wire::StatusQuery {
        section: gmem_protocol::wire::StatusSection::Files,
        start: 0,
    })
    .encode();
    let mut frame = Header::request(Request::Status, status.len())
        .to_bytes()
        .to_vec();
    frame.extend_from_slice(&status);
    stream.set_nonblocking(true).unwrap();
    // Push requests until the socket is full, never reading a reply.
    let mut sent = 0usize;
    while sent < 200_000 {
        match stream.write(&frame) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    still_serving(&mut daemon);
    let mut buf = [0u8; 64];
    stream.set_nonblocking(false).unwrap();
    assert!(
        stream.read(&mut buf).unwrap() > 0,
        "its replies were queued"
    );
}

#[test]
fn operators_stay_allowed_whatever_allow_uid_says() {
    // Only uid 65534 is listed; root, an operator, must not be locked out.
    let mut daemon = Daemon::start_with(&["--allow-uid", "65534"]);
    let out = daemon.gmemctl().arg("status").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    still_serving(&mut daemon);
    // The listed uid is a client.
    let out = Command::new(bin("gmem-test-client"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--vm", "nobody-vm", "--create", "x:4096"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Any other uid is not.
    let out = Command::new(bin("gmem-test-client"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--vm", "other-vm"])
        .uid(65533)
        .gid(65533)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uid 65533 is not allowed"), "{stderr}");
    // And the daemon said at start who may connect.
    let log = daemon.log();
    assert!(
        log.contains("clients may connect from uids [0, 65534]"),
        "{log}"
    );
}

#[test]
fn limits_that_would_serve_nobody_are_refused_at_start() {
    let out = Command::new(bin("gmemd"))
        .args(["--socket", "/nonexistent/x.sock", "--max-connections", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--max-connections") && stderr.contains("0 is not in 1.."),
        "{stderr}"
    );
}

#[test]
fn a_runtime_dir_another_user_could_have_made_is_refused_by_gmemd_and_gmemctl() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, says) in [(&foreign, "belongs to uid 65534"), (&open, "chmod go-w")] {
        let out = Command::new(bin("gmemd"))
            .arg("--state-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!dir.join("gmemd.sock").exists());
    }
    // gmemctl's default socket lives in $XDG_RUNTIME_DIR/gmemd: a directory
    // there made by someone else is not talked to.
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::rename(&foreign, runtime.join("gmemd")).unwrap();
    let out = Command::new(bin("gmemctl"))
        .arg("status")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("GMEMD_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
}

#[test]
fn the_config_file_is_used_and_its_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[quotas]\nfiles = 1\nmemroy = \"1G\"\n").unwrap();
    let out = Command::new(bin("gmemd"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--config")
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.toml") && stderr.contains("memroy"),
        "{stderr}"
    );

    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "[quotas]\nfiles = 1\n").unwrap();
    let daemon = Daemon::start_with(&["--config", good.to_str().unwrap()]);
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("one"), 4096, MemoryKind::Memfd).unwrap();
    let err = a.create(&name("two"), 4096, MemoryKind::Memfd).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::DQUOT.raw_os_error()), "{err}");
    // A flag wins over the file.
    let daemon = Daemon::start_with(&["--config", good.to_str().unwrap(), "--quota-files", "2"]);
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("one"), 4096, MemoryKind::Memfd).unwrap();
    a.create(&name("two"), 4096, MemoryKind::Memfd).unwrap();
}

#[test]
fn a_second_gmemd_on_the_same_state_dir_is_refused() {
    let first = Daemon::start();
    let out = Command::new(bin("gmemd"))
        .arg("--state-dir")
        .arg(first.dir())
        .arg("--socket")
        .arg(first.dir().join("other.sock"))
        .arg("--no-keeper")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another gmemd") && stderr.contains(&first.pid().to_string()),
        "{stderr}"
    );
}
