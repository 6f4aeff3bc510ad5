//! The client across daemon restarts, against a scripted fake daemon on
//! the other end of a socketpair (a thread).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::io::Errno;

use super::*;
use crate::conn::{send_message, Frame};
use crate::server::{encode_reply, encode_restart_notice, OutgoingReply, Response};
use crate::wire::{
    encode_status_page, BindingStatus, GuestAddress, Header, OwnerStatus, Reply, MARKER_CODES,
};

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn vm() -> VmId {
    VmId::from_name(name("vm-a"))
}

fn memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

/// The daemon's end: reads requests, answers as the test scripts it.
struct Fake {
    stream: UnixStream,
    reader: FrameReader,
}

impl Fake {
    fn read(&mut self) -> Frame {
        self.reader
            .read_frame(self.stream.as_fd())
            .unwrap()
            .expect("blocking read")
    }

    /// Reads the next request; it must have `code`.
    fn expect(&mut self, code: Request) -> Frame {
        let frame = self.read();
        assert_eq!(frame.header.code, code.code(), "{:?}", frame.header);
        frame
    }

    fn send(&mut self, out: OutgoingReply) {
        let fds: Vec<_> = out.fds.iter().map(AsFd::as_fd).collect();
        send_message(self.stream.as_fd(), out.header, &out.payload, &fds).unwrap();
    }

    fn reply(&mut self, code: Request, response: Response) {
        self.send(encode_reply(code.code(), response));
    }

    fn refuse(&mut self, code: Request, errno: Errno) {
        self.reply(code, Response::error(errno, "refused"));
    }

    fn notice(&mut self, restarts: u32, pending: bool) {
        self.send(encode_restart_notice(restarts, pending));
    }

    /// Reads a marker and answers it as the daemon answers unknown codes.
    fn answer_marker(&mut self) {
        let frame = self.read();
        assert!(
            MARKER_CODES.contains(&frame.header.code),
            "{:?}",
            frame.header
        );
        let code = frame.header.code;
        self.send(encode_reply(
            code,
            Response::error(Errno::OPNOTSUPP, "unknown request code"),
        ));
    }

    /// Answers a STATUS of the scoped files table with `files` of vm-a.
    fn status_files(&mut self, files: &[FileStatus]) {
        self.expect(Request::Status);
        let scoped: Vec<ScopedFileStatus> = files
            .iter()
            .map(|file| ScopedFileStatus {
                file: file.clone(),
                vm: Some(vm()),
                idle_secs: 0,
            })
            .collect();
        let total = u32::try_from(scoped.len()).unwrap();
        let (body, _) = encode_status_page(total, 0, &scoped, ScopedFileStatus::encode);
        self.reply(Request::Status, Response::ok(body));
    }

    /// Nothing more may come: the client sent exactly what was scripted
    /// before it hung up.
    fn expect_nothing_more(&mut self) {
        match self.reader.read_frame(self.stream.as_fd()) {
            Err(ConnError::Closed) => {}
            Ok(Some(frame)) => panic!("the client sent more: {:?}", frame.header),
            other => panic!("{other:?}"),
        }
    }
}

/// A lease client of vm-a (every feature) and a fake daemon running
/// `script` in a thread.
fn with_fake(script: impl FnOnce(&mut Fake) + Send + 'static) -> (Client, JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let client = Client::resume(ours, Some(vm()), LeaseId::new(1));
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let daemon = thread::spawn(move || {
        let mut fake = Fake {
            stream: theirs,
            reader: FrameReader::new(),
        };
        script(&mut fake);
    });
    (client, daemon)
}

fn finish(client: Client, daemon: JoinHandle<()>) {
    drop(client);
    daemon.join().expect("fake daemon");
}

fn leases_page() -> Vec<u8> {
    encode_status_page(0, 0, &[] as &[LeaseStatus], LeaseStatus::encode).0
}

fn file(name_: &str, size: u64, kind: MemoryKind, bindings: Vec<BindingStatus>) -> FileStatus {
    FileStatus {
        name: name(name_),
        size,
        page_size: 4096,
        kind,
        owner: (!bindings.is_empty()).then(|| OwnerStatus {
            vm: vm(),
            lease: LeaseId::new(1).unwrap(),
        }),
        bindings,
    }
}

fn file_info(size: u64, created: bool) -> Vec<u8> {
    FileInfo {
        size,
        page_size: 4096,
        kind: MemoryKind::Memfd,
        created,
    }
    .encode()
}

#[test]
fn a_pending_request_is_answered_after_the_notice() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Status);
        fake.notice(3, true);
        fake.reply(Request::Status, Response::ok(leases_page()));
        fake.expect_nothing_more();
    });
    assert!(client.leases().unwrap().is_empty());
    assert_eq!(client.restarts_seen(), 1);
    assert_eq!(
        client.last_restart(),
        Some(RestartNotice {
            restarts: 3,
            pending: true
        })
    );
    finish(client, daemon);
}

#[test]
fn a_lost_status_is_sent_again() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Status); // read by the daemon that died
        fake.notice(1, false);
        fake.answer_marker();
        fake.expect(Request::Status);
        fake.reply(Request::Status, Response::ok(leases_page()));
        fake.expect_nothing_more();
    });
    assert!(client.leases().unwrap().is_empty());
    assert_eq!(client.restarts_seen(), 1);
    finish(client, daemon);
}

#[test]
fn a_request_sent_after_the_notice_is_not_sent_twice() {
    // The daemon restarted while the client was idle: the notice is stale
    // by the time the client sends, and its request is answered normally.
    let (mut client, daemon) = with_fake(|fake| {
        fake.notice(1, false);
        fake.expect(Request::Unbind);
        fake.reply(Request::Unbind, Response::ok(Vec::new()));
        fake.answer_marker();
        fake.expect(Request::Unbind);
        fake.refuse(Request::Unbind, Errno::NOENT);
        fake.expect_nothing_more();
    });
    client.unbind(3).unwrap();
    // The next request sees no restart: a plain refusal.
    assert_eq!(
        client.unbind(3).unwrap_err().errno(),
        Some(Errno::NOENT.raw_os_error())
    );
    assert_eq!(client.restarts_seen(), 1);
    finish(client, daemon);
}

#[test]
fn a_lost_create_that_was_applied_is_opened() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Create);
        fake.notice(1, false);
        fake.answer_marker();
        fake.expect(Request::Create);
        fake.refuse(Request::Create, Errno::EXIST);
        fake.expect(Request::Open);
        fake.reply(
            Request::Open,
            Response::ok_with_fds(file_info(8192, false), vec![memfd(8192)]),
        );
        // Then one whose name holds a file of another size: not ours.
        fake.expect(Request::Create);
        fake.notice(2, false);
        fake.answer_marker();
        fake.expect(Request::Create);
        fake.refuse(Request::Create, Errno::EXIST);
        fake.expect(Request::Open);
        fake.reply(
            Request::Open,
            Response::ok_with_fds(file_info(4096, false), vec![memfd(4096)]),
        );
        fake.expect_nothing_more();
    });
    let (fd, info) = client
        .create(&name("ram"), 8192, MemoryKind::Memfd)
        .unwrap();
    assert!(info.created);
    assert_eq!(info.size, 8192);
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
    let err = client
        .create(&name("ram"), 8192, MemoryKind::Memfd)
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EXIST.raw_os_error()));
    assert_eq!(client.restarts_seen(), 2);
    finish(client, daemon);
}

#[test]
fn a_lost_bind_is_fine_when_the_slot_holds_that_binding() {
    let binding = BindingStatus {
        confirmed: false,
        slot: 2,
        gpa: GuestAddress(1 << 20),
        offset: 4096,
        size: 8192,
    };
    let (mut client, daemon) = with_fake(move |fake| {
        for gpa in [1 << 20, 2 << 20] {
            fake.expect(Request::Bind);
            fake.notice(1, false);
            fake.answer_marker();
            fake.expect(Request::Bind);
            fake.refuse(Request::Bind, Errno::EXIST);
            let held = BindingStatus {
                confirmed: false,
                gpa: GuestAddress(gpa),
                ..binding
            };
            fake.status_files(&[
                file("other", 4096, MemoryKind::Memfd, Vec::new()),
                file("ram", 16384, MemoryKind::Memfd, vec![held]),
            ]);
        }
        fake.expect_nothing_more();
    });
    let bind = BindRequest::new(2, GuestAddress(1 << 20), name("ram"), 4096, 8192);
    client.bind(&bind).unwrap();
    // The slot holds another binding (another gpa): a real EEXIST.
    let err = client.bind(&bind).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EXIST.raw_os_error()));
    finish(client, daemon);
}

#[test]
fn lost_unbind_and_destroy_that_were_applied_succeed() {
    let (mut client, daemon) = with_fake(|fake| {
        for code in [Request::Unbind, Request::Destroy] {
            fake.expect(code);
            fake.notice(1, false);
            fake.answer_marker();
            fake.expect(code);
            fake.refuse(code, Errno::NOENT);
        }
        fake.expect_nothing_more();
    });
    client.unbind(5).unwrap();
    client.destroy(&name("ram")).unwrap();
    assert_eq!(client.restarts_seen(), 2);
    finish(client, daemon);
}

#[test]
fn a_lost_deposit_that_was_applied_succeeds() {
    let (mut client, daemon) = with_fake(|fake| {
        let frame = fake.expect(Request::Deposit);
        assert_eq!(frame.fds.len(), 1);
        fake.notice(1, false);
        fake.answer_marker();
        let frame = fake.expect(Request::Deposit);
        assert_eq!(frame.fds.len(), 1, "the fd travels again");
        fake.refuse(Request::Deposit, Errno::EXIST);
        fake.status_files(&[file("gmem", 8192, MemoryKind::Memfd, Vec::new())]);
        fake.expect_nothing_more();
    });
    let fd = memfd(8192);
    let info = client
        .deposit(&name("gmem"), MemoryKind::Memfd, fd.as_fd())
        .unwrap();
    assert_eq!(
        FileInfo::decode(&file_info(8192, true)).unwrap(),
        info,
        "what the first try would have answered"
    );
    finish(client, daemon);
}

#[test]
fn a_lost_request_that_cannot_be_resent_is_reported() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Revoke);
        fake.notice(1, false);
        fake.answer_marker();
        // The connection still works.
        fake.expect(Request::Status);
        fake.reply(Request::Status, Response::ok(leases_page()));
        fake.expect_nothing_more();
    });
    let err = client.revoke(&VmSelector::Name(name("vm-b"))).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Restarted {
                request: Request::Revoke
            }
        ),
        "{err:?}"
    );
    client.leases().unwrap();
    finish(client, daemon);
}

#[test]
fn restarts_during_the_marker_wait_are_ridden_out() {
    let (mut client, daemon) = with_fake(|fake| {
        // Restart 1 loses the UNBIND; restart 2 loses the first marker.
        fake.expect(Request::Unbind);
        fake.notice(1, false);
        let first = fake.read();
        assert!(MARKER_CODES.contains(&first.header.code));
        fake.notice(2, false);
        fake.answer_marker();
        fake.expect(Request::Unbind);
        // Restart 3 with the second try still unread: it is answered.
        fake.notice(3, true);
        fake.reply(Request::Unbind, Response::ok(Vec::new()));
        fake.expect_nothing_more();
    });
    client.unbind(1).unwrap();
    assert_eq!(client.restarts_seen(), 3);
    finish(client, daemon);
}

#[test]
fn a_reply_read_before_the_marker_is_kept() {
    let (mut client, daemon) = with_fake(|fake| {
        // Both markers are answered; the reply came between them.
        fake.notice(1, false);
        fake.expect(Request::Status);
        let first = fake.read();
        assert!(MARKER_CODES.contains(&first.header.code));
        fake.reply(Request::Status, Response::ok(leases_page()));
        fake.notice(2, false);
        fake.send(encode_reply(
            first.header.code,
            Response::error(Errno::OPNOTSUPP, "unknown"),
        ));
        fake.answer_marker();
        fake.expect_nothing_more();
    });
    assert!(client.leases().unwrap().is_empty());
    assert_eq!(client.restarts_seen(), 2);
    finish(client, daemon);
}

#[test]
fn a_reply_to_something_else_is_unexpected() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Unbind);
        fake.reply(Request::Bind, Response::ok(Vec::new()));
    });
    let err = client.unbind(1).unwrap_err();
    assert!(
        matches!(err, ClientError::UnexpectedReply { .. }),
        "{err:?}"
    );
    finish(client, daemon);
}

#[test]
fn a_malformed_notice_is_an_error() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Unbind);
        let payload = Reply::ok(vec![0; 3]).encode();
        send_message(
            fake.stream.as_fd(),
            Header::notice(payload.len()),
            &payload,
            &[],
        )
        .unwrap();
    });
    assert!(matches!(
        client.unbind(1).unwrap_err(),
        ClientError::Wire(_)
    ));
    finish(client, daemon);
}

#[test]
fn restart_is_answered_then_the_notice_is_skipped() {
    let (mut client, daemon) = with_fake(|fake| {
        let frame = fake.expect(Request::Restart);
        assert!(frame.payload.is_empty());
        fake.reply(Request::Restart, Response::ok(Vec::new()));
        // The new gmemd's notice comes before the next reply.
        fake.expect(Request::Status);
        fake.notice(1, true);
        fake.reply(Request::Status, Response::ok(leases_page()));
        fake.expect_nothing_more();
    });
    client.restart().unwrap();
    assert!(client.leases().unwrap().is_empty());
    assert_eq!(client.restarts_seen(), 1);
    finish(client, daemon);
}

#[test]
fn a_lost_restart_is_never_sent_twice() {
    let (mut client, daemon) = with_fake(|fake| {
        fake.expect(Request::Restart);
        fake.notice(1, false);
        fake.answer_marker();
        fake.expect_nothing_more();
    });
    let err = client.restart().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Restarted {
                request: Request::Restart
            }
        ),
        "{err:?}"
    );
    finish(client, daemon);
}

fn daemon_status() -> DaemonStatus {
    DaemonStatus {
        pid: 77,
        restarts: 2,
        born: 1_000,
        started: 2_000,
        files: 3,
        leases: 1,
        recovered: "3 files, 1 lease".to_owned(),
    }
}

#[test]
fn daemon_status_reads_section_3() {
    let (mut client, daemon) = with_fake(|fake| {
        let frame = fake.expect(Request::Status);
        let query = RequestBody::decode(frame.header.code, &frame.payload).unwrap();
        assert_eq!(
            query,
            RequestBody::Status(StatusQuery {
                section: StatusSection::Daemon,
                start: 0
            })
        );
        let (body, _) = encode_status_page(1, 0, &[daemon_status()], DaemonStatus::encode);
        fake.reply(Request::Status, Response::ok(body));
        fake.expect_nothing_more();
    });
    assert_eq!(client.daemon_status().unwrap(), Some(daemon_status()));
    finish(client, daemon);
}

#[test]
fn a_daemon_without_section_3_has_no_daemon_status() {
    let (mut client, daemon) = with_fake(|fake| {
        // What an older gmemd answers: the section does not decode.
        fake.expect(Request::Status);
        fake.refuse(Request::Status, Errno::INVAL);
        // Any other refusal is an error; so is a page without the entry.
        fake.expect(Request::Status);
        fake.refuse(Request::Status, Errno::PERM);
        fake.expect(Request::Status);
        let (empty, _) = encode_status_page(1, 1, &[] as &[DaemonStatus], DaemonStatus::encode);
        fake.reply(Request::Status, Response::ok(empty));
        fake.expect_nothing_more();
    });
    assert_eq!(client.daemon_status().unwrap(), None);
    let err = client.daemon_status().unwrap_err();
    assert_eq!(err.errno(), Some(Errno::PERM.raw_os_error()), "{err:?}");
    let err = client.daemon_status().unwrap_err();
    assert!(
        matches!(err, ClientError::UnexpectedReply { .. }),
        "{err:?}"
    );
    finish(client, daemon);
}
