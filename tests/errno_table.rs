//! Every refusal PROTOCOL.md documents, one table row each: §10's errno
//! table, §5.3's order of checks, each request's table in §7, the framing
//! errors of §4.4 and the connection limits of §3. A row is a set-up, the
//! request (its exact bytes and fds, on a raw connection), the errno it
//! must get and a piece of the text that names what was refused. Every row
//! runs on a fresh gmemd, and STATUS (every section, as an operator sees
//! it) must be the same before and after the refused request: "a refused
//! request changes nothing" (§5.3).

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use gmem_protocol::conn::{send_message, FrameReader};
use gmem_protocol::wire::{
    BindRequest, CreateFlags, CreateRequest, DaemonStatus, DepositRequest, DeviceRequest, Features,
    FileRef, FileStatus, FillStatus, GuestAddress, HandoffRequest, Header, Hello, LeaseStatus,
    MemoryKind, Reply, Request, RequestBody, ScopedFileStatus, StatusQuery, StatusSection,
    TransferRequest, VmSelector,
};
use gmem_protocol::Client;
use gmem_tests::tenant::{spawn_tenant, NOBODY, OTHER};
use gmem_tests::{e2e, hugepages, name, vm, wait_until, Daemon};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit};

const MIB: u64 = 1 << 20;
const HUGE_PAGE: u64 = 2 << 20;
/// An allowed client that is no operator: every gmemd here is started with
/// `--allow-uid 65534`.
const CLIENT: u32 = NOBODY;
/// Neither allowed nor an operator.
const STRANGER: u32 = OTHER;
/// STATUS is code 8 (the probe that tells whether a connection stays open).
const STATUS: u32 = 8;

// ---------------------------------------------------------------------------
// The table and its runner.

/// A refused request's row.
struct Row {
    what: &'static str,
    /// gmemd's arguments besides `--allow-uid 65534`.
    args: &'static [&'static str],
    setup: fn(&mut World) -> Setup,
    request: fn(&mut World) -> Outcome,
    expect: Expect,
}

fn row(
    what: &'static str,
    setup: fn(&mut World) -> Setup,
    request: fn(&mut World) -> Outcome,
    expect: Expect,
) -> Row {
    Row {
        what,
        args: &[],
        setup,
        request,
        expect,
    }
}

impl Row {
    fn args(mut self, args: &'static [&'static str]) -> Self {
        self.args = args;
        self
    }
}

/// A row whose set-up needs what this host lacks (and `GMEM_E2E` is not
/// `require`), or a refusal this host cannot produce.
struct Skip(String);

type Setup = Result<(), Skip>;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An error reply with this errno and text; the connection stays open.
    Refused(Errno, &'static str),
    /// An error reply, then gmemd closes the connection.
    RefusedThenClosed(Errno, &'static str),
    /// The connection is closed without any reply.
    Closed,
}

fn refused(errno: Errno, text: &'static str) -> Expect {
    Expect::Refused(errno, text)
}

/// What the request got.
#[derive(Debug)]
enum Answer {
    Done(Vec<OwnedFd>),
    Refused {
        errno: i32,
        text: String,
    },
    Closed,
    /// Something a row itself found wrong.
    Unexpected(String),
}

#[derive(Debug)]
struct Outcome {
    answer: Answer,
    /// Whether the connection still answered afterwards.
    open_after: bool,
}

impl Expect {
    fn check(self, got: &Outcome) -> Result<(), String> {
        if let Answer::Unexpected(why) = &got.answer {
            return Err(why.clone());
        }
        let (errno, text, closes) = match self {
            Expect::Closed => {
                return match &got.answer {
                    Answer::Closed => Ok(()),
                    other => Err(format!("expected the connection closed, got {other:?}")),
                }
            }
            Expect::Refused(errno, text) => (errno, text, false),
            Expect::RefusedThenClosed(errno, text) => (errno, text, true),
        };
        let Answer::Refused {
            errno: got_errno,
            text: got_text,
        } = &got.answer
        else {
            return Err(format!(
                "expected errno {} ({text:?}), got {:?}",
                errno.raw_os_error(),
                got.answer
            ));
        };
        if *got_errno != errno.raw_os_error() {
            return Err(format!(
                "expected errno {}, got errno {got_errno}: {got_text:?}",
                errno.raw_os_error()
            ));
        }
        if !got_text.contains(text) {
            return Err(format!("the text {got_text:?} lacks {text:?}"));
        }
        match (closes, got.open_after) {
            (false, false) => Err(format!("{got_text:?}, then the connection was closed")),
            (true, true) => Err(format!("{got_text:?}, and the connection stayed open")),
            _ => Ok(()),
        }
    }
}

/// Runs every row on a gmemd of its own; fails listing every row that did
/// not get what the spec says (all rows run, whatever fails).
fn run_table(table: &str, rows: Vec<Row>) {
    let total = rows.len();
    let mut failures = Vec::new();
    for row in &rows {
        let result = catch_unwind(AssertUnwindSafe(|| run_row(row)));
        let failure = match result {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(panic) => format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            ),
        };
        failures.push(format!("- {}: {failure}", row.what));
    }
    assert!(
        failures.is_empty(),
        "{table}: {} of {total} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn run_row(row: &Row) -> Result<(), String> {
    let mut w = World::start(row.args);
    if let Err(Skip(why)) = (row.setup)(&mut w) {
        eprintln!("SKIPPED row {:?}: {why}", row.what);
        return Ok(());
    }
    let before = Snapshot::take(&mut w.ops);
    let outcome = (row.request)(&mut w);
    let after = Snapshot::take(&mut w.ops);
    let mut problems = Vec::new();
    if let Err(why) = row.expect.check(&outcome) {
        problems.push(why);
    }
    if before != after {
        problems.push(format!(
            "STATUS changed\n  before: {before:?}\n  after:  {after:?}"
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let log = w.daemon.log();
    let tail: Vec<&str> = log.lines().rev().take(8).collect();
    problems.push(format!(
        "gmemd's last lines:\n    {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
    ));
    Err(problems.join("\n  "))
}

/// STATUS, every section, as an operator sees it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    daemon: Option<DaemonStatus>,
    files: Vec<FileStatus>,
    scoped: Vec<ScopedFileStatus>,
    leases: Vec<LeaseStatus>,
    memory: Vec<FillStatus>,
}

impl Snapshot {
    fn take(ops: &mut Client) -> Snapshot {
        let mut scoped = ops.scoped_files().expect("STATUS scoped files");
        // An orphan's age follows the clock, not requests: the one field
        // that may change between two looks without anything happening.
        for file in &mut scoped {
            file.idle_secs = 0;
        }
        Snapshot {
            daemon: ops.daemon_status().expect("STATUS daemon"),
            files: ops.files().expect("STATUS files"),
            scoped,
            leases: ops.leases().expect("STATUS leases"),
            memory: ops.memory_status().expect("STATUS memory"),
        }
    }
}

// ---------------------------------------------------------------------------
// A gmemd, its sessions, and raw connections.

/// One row's gmemd, the operator session that takes the snapshots, and the
/// connections the row made, by name.
struct World {
    daemon: Daemon,
    ops: Client,
    conns: HashMap<&'static str, Conn>,
    /// What must outlive the request: tenants, hugepages, a KVM VM.
    keep: Vec<Box<dyn Any>>,
}

impl World {
    fn start(args: &[&str]) -> World {
        let client = CLIENT.to_string();
        let mut all = vec!["--allow-uid", client.as_str()];
        all.extend_from_slice(args);
        let daemon = Daemon::start_with(&all);
        // The harness's probe connection may hold its slot a moment longer
        // (rows with few connection slots).
        let ops = wait_until(Duration::from_secs(10), "an operator session", || {
            Client::connect_control(daemon.socket()).ok()
        });
        ops.set_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        World {
            daemon,
            ops,
            conns: HashMap::new(),
            keep: Vec::new(),
        }
    }

    fn conn(&mut self, key: &str) -> &mut Conn {
        self.conns
            .get_mut(key)
            .unwrap_or_else(|| panic!("no connection {key}"))
    }

    /// A connection that has not said HELLO, as `uid` (`None`: root).
    fn fresh(&mut self, key: &'static str, uid: Option<u32>) {
        let conn = Conn::connect(&self.daemon.socket(), uid);
        self.conns.insert(key, conn);
    }

    /// A session after a successful HELLO: a VM lease, or a control
    /// session for `vm_name` `None`.
    fn session(
        &mut self,
        key: &'static str,
        uid: Option<u32>,
        vm_name: Option<&str>,
        features: Features,
    ) {
        let body = hello(vm_name, features);
        let socket = self.daemon.socket();
        let conn = wait_until(Duration::from_secs(10), "HELLO to be answered", || {
            let mut conn = Conn::connect(&socket, uid);
            match conn.call(&body, &[]) {
                Answer::Done(_) => Some(conn),
                // A slot not given back yet (rows with few slots).
                Answer::Closed => None,
                other => panic!("HELLO {vm_name:?} as {uid:?}: {other:?}"),
            }
        });
        self.conns.insert(key, conn);
    }

    /// Root's lease of `vm_name`, every feature: an operator's lease.
    fn lease(&mut self, key: &'static str, vm_name: &str) {
        self.session(key, None, Some(vm_name), Features::all());
    }

    /// uid 65534's lease of `vm_name`, every feature: no operator.
    fn client_lease(&mut self, key: &'static str, vm_name: &str) {
        self.session(key, Some(CLIENT), Some(vm_name), Features::all());
    }

    /// Root's control session, every feature: an operator.
    fn operator(&mut self, key: &'static str) {
        self.session(key, None, None, Features::all());
    }

    /// uid 65534's control session, every feature: no operator.
    fn client_control(&mut self, key: &'static str) {
        self.session(key, Some(CLIENT), None, Features::all());
    }

    /// A set-up step that must succeed; returns the reply's fds.
    fn must(&mut self, key: &str, body: &RequestBody, fds: &[BorrowedFd<'_>]) -> Vec<OwnedFd> {
        match self.conn(key).call(body, fds) {
            Answer::Done(fds) => fds,
            other => panic!("set-up {} on {key}: {other:?}", body.request()),
        }
    }

    /// The request under test, and whether its connection still answers.
    fn ask(&mut self, key: &str, body: &RequestBody, fds: &[BorrowedFd<'_>]) -> Outcome {
        let conn = self.conn(key);
        let answer = conn.call(body, fds);
        conn.outcome(answer)
    }

    /// As [`World::ask`], with hand-made bytes.
    fn ask_raw(&mut self, key: &str, code: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Outcome {
        let conn = self.conn(key);
        conn.send(code, payload, fds);
        let answer = conn.reply(code);
        conn.outcome(answer)
    }

    /// The reply to a request sent earlier (pipelined in the set-up).
    fn answer(&mut self, key: &str, code: u32) -> Outcome {
        let conn = self.conn(key);
        let answer = conn.reply(code);
        conn.outcome(answer)
    }
}

/// A raw connection: the request's exact bytes and fds, and the reply as
/// the wire has it.
struct Conn {
    stream: UnixStream,
    reader: FrameReader,
}

impl Conn {
    fn connect(socket: &Path, uid: Option<u32>) -> Conn {
        let stream = match uid {
            None => UnixStream::connect(socket),
            Some(uid) => connect_as(socket, uid),
        }
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn {
            stream,
            reader: FrameReader::new(),
        }
    }

    fn send(&self, code: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let header = Header {
            code,
            is_reply: false,
            size: u32::try_from(payload.len()).expect("small payload"),
        };
        // On a connection gmemd closed the write fails; the read says so.
        let _ = send_message(self.stream.as_fd(), header, payload, fds);
    }

    fn call(&mut self, body: &RequestBody, fds: &[BorrowedFd<'_>]) -> Answer {
        let code = body.request().code();
        self.send(code, &body.encode(), fds);
        self.reply(code)
    }

    /// Reads one reply, checking what every reply must be (§4.1, §5.1):
    /// the request's code, and no fds on an error.
    fn reply(&mut self, code: u32) -> Answer {
        let frame = match self.reader.read_frame(self.stream.as_fd()) {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("no reply to request code {code:#x}"),
            Err(e) if e.is_hangup() => return Answer::Closed,
            Err(e) => panic!("reading the reply to request code {code:#x}: {e:?}"),
        };
        if !frame.header.is_reply || frame.header.code != code {
            return Answer::Unexpected(format!(
                "a reply to request code {code:#x} with header {:?}",
                frame.header
            ));
        }
        let reply = match Reply::decode(&frame.payload) {
            Ok(reply) => reply,
            Err(e) => return Answer::Unexpected(format!("a reply that does not decode: {e}")),
        };
        if reply.status == 0 {
            return Answer::Done(frame.fds);
        }
        if !frame.fds.is_empty() {
            return Answer::Unexpected(format!("an error reply with fds: {reply:?}"));
        }
        Answer::Refused {
            errno: -reply.status,
            text: reply.text,
        }
    }

    /// The answer, and whether the connection still answers a request.
    fn outcome(&mut self, answer: Answer) -> Outcome {
        let open_after = !matches!(answer, Answer::Closed) && {
            self.send(STATUS, &status(StatusSection::Daemon).encode(), &[]);
            !matches!(self.reply(STATUS), Answer::Closed)
        };
        Outcome { answer, open_after }
    }

    /// Writes bytes as they are (several messages, or a broken one).
    fn write(&self, bytes: &[u8]) {
        let _ = (&self.stream).write_all(bytes);
    }
}

/// Connects as `uid`: `SO_PEERCRED` gives gmemd the effective uid of the
/// thread that called `connect`, so this thread takes on `uid` just for
/// that call. The raw syscall changes this thread only (glibc's wrapper
/// would change every thread), and the real and saved uids stay root, so
/// it switches back.
fn connect_as(socket: &Path, uid: u32) -> std::io::Result<UnixStream> {
    set_thread_euid(uid);
    let stream = UnixStream::connect(socket);
    set_thread_euid(0);
    stream
}

fn set_thread_euid(uid: u32) {
    const UNCHANGED: libc::c_long = -1;
    // SAFETY: setresuid takes three integers and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            UNCHANGED,
            libc::c_long::from(uid),
            UNCHANGED,
        )
    };
    assert_eq!(
        ret,
        0,
        "setresuid(-1, {uid}, -1): {} (the tests run as root)",
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------
// Requests.

fn hello(vm_name: Option<&str>, features: Features) -> RequestBody {
    RequestBody::Hello(Hello {
        features,
        vm: vm_name.map(vm),
    })
}

fn create(file: &str, size: u64) -> RequestBody {
    create_kind(file, size, MemoryKind::Memfd, CreateFlags::empty())
}

fn create_kind(file: &str, size: u64, kind: MemoryKind, flags: CreateFlags) -> RequestBody {
    RequestBody::Create(CreateRequest {
        name: name(file),
        size,
        kind,
        flags,
    })
}

/// A name in the session's own namespace (a 64-byte name).
fn own(file: &str) -> FileRef {
    FileRef::own(name(file))
}

/// A name in VM `vm_name`'s namespace (a 144-byte scoped name).
fn in_vm(vm_name: &str, file: &str) -> FileRef {
    FileRef::vm(VmSelector::Name(name(vm_name)), name(file))
}

/// A name in the operators' namespace (a 144-byte scoped name).
fn in_operators(file: &str) -> FileRef {
    FileRef::operators(name(file))
}

fn open(file: FileRef) -> RequestBody {
    RequestBody::Open(file)
}

fn bind(slot: u32, gpa: u64, file: &str, offset: u64, size: u64) -> RequestBody {
    RequestBody::Bind(BindRequest::new(
        slot,
        GuestAddress(gpa),
        name(file),
        offset,
        size,
    ))
}

fn deposit(file: &str, kind: MemoryKind) -> RequestBody {
    RequestBody::Deposit(DepositRequest {
        name: name(file),
        kind,
    })
}

fn destroy(file: FileRef) -> RequestBody {
    RequestBody::Destroy(file)
}

fn status(section: StatusSection) -> RequestBody {
    RequestBody::Status(StatusQuery { section, start: 0 })
}

fn revoke(vm_name: &str) -> RequestBody {
    RequestBody::Revoke(VmSelector::Name(name(vm_name)))
}

fn scrub(file: FileRef) -> RequestBody {
    RequestBody::Scrub(file)
}

fn transfer(from: FileRef, to: FileRef) -> RequestBody {
    RequestBody::Transfer(TransferRequest { from, to })
}

fn forget(vm_name: &str) -> RequestBody {
    RequestBody::Forget(VmSelector::Name(name(vm_name)))
}

fn handoff(fd: u32) -> RequestBody {
    RequestBody::Handoff(HandoffRequest { fd })
}

fn device(disk: Option<&str>, queues: u32) -> RequestBody {
    RequestBody::Device(DeviceRequest {
        queues,
        disk: disk.map(name),
    })
}

/// `body`'s payload with the u32 at `offset` (a flag, pad or enum field)
/// set to `value`.
fn poke(body: &RequestBody, offset: usize, value: u32) -> Vec<u8> {
    let mut bytes = body.encode();
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// `body`'s payload with `field` written at `offset`, the rest of a
/// 64-byte name (or 16-byte UUID) field zeroed.
fn poke_field(body: &RequestBody, offset: usize, len: usize, field: &[u8]) -> Vec<u8> {
    let mut bytes = body.encode();
    bytes[offset..offset + len].fill(0);
    bytes[offset..offset + field.len()].copy_from_slice(field);
    bytes
}

/// One whole message as bytes (for pipelining several in one write).
fn frame(code: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Header {
        code,
        is_reply: false,
        size: u32::try_from(payload.len()).expect("small payload"),
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn code(request: Request) -> u32 {
    request.code()
}

// ---------------------------------------------------------------------------
// File descriptors to hand over.

/// A memfd of `size` bytes that may be sealed, as a VMM makes one.
fn memfd(size: u64) -> OwnedFd {
    memfd_with(size, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
}

fn memfd_with(size: u64, flags: MemfdFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("errno-table", flags).expect("memfd_create");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    fd
}

/// DEPOSITs `fd` and checks that a refusal left it exactly as it came
/// (§7.6): gmemd seals a memfd only once it adopts it.
fn deposit_as_is(w: &mut World, key: &str, body: &RequestBody, fd: &OwnedFd) -> Outcome {
    let seals = rustix::fs::fcntl_get_seals(fd).ok();
    let outcome = w.ask(key, body, &[fd.as_fd()]);
    let now = rustix::fs::fcntl_get_seals(fd).ok();
    if !matches!(outcome.answer, Answer::Done(_)) && now != seals {
        return Outcome {
            answer: Answer::Unexpected(format!(
                "the refused DEPOSIT changed the fd's seals from {seals:?} to {now:?}"
            )),
            open_after: outcome.open_after,
        };
    }
    outcome
}

/// A pidfd of this test process.
fn own_pidfd() -> OwnedFd {
    rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).expect("pidfd")
}

/// A pidfd of a process that has exited and been reaped.
fn dead_pidfd() -> OwnedFd {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).expect("pidfd");
    child.kill().expect("kill");
    child.wait().expect("reap");
    pidfd
}

// ---------------------------------------------------------------------------
// What some rows need from the host.

/// Skips (or, under `GMEM_E2E=require`, fails) a row that needs `what`.
fn needs(present: bool, what: &str) -> Setup {
    if present {
        return Ok(());
    }
    assert!(
        !e2e::required(),
        "{what} is required (GMEM_E2E=require) but not available"
    );
    Err(Skip(format!("{what} is not available")))
}

fn secret_memory_works() -> bool {
    gmemd::memory::secret_fd().is_ok()
}

/// vm-a's lease (key `a`) with a guest_memfd `gmem` deposited through it.
fn a_with_guest_memfd(w: &mut World) -> Setup {
    if !e2e::kvm() {
        return Err(Skip("/dev/kvm is not available".to_owned()));
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let kvm_vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let raw = kvm_vm.create_guest_memfd(kvm_bindings::kvm_create_guest_memfd {
        size: 2 * MIB,
        flags: 0,
        reserved: [0; 6],
    });
    needs(raw.is_ok(), "KVM_CREATE_GUEST_MEMFD")?;
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
    let gmem = unsafe { OwnedFd::from_raw_fd(raw.expect("checked")) };
    w.lease("a", "vm-a");
    w.must(
        "a",
        &deposit("gmem", MemoryKind::GuestMemfd),
        &[gmem.as_fd()],
    );
    w.keep.push(Box::new(kvm_vm));
    Ok(())
}

/// A hugetlb file `huge` in the operators' namespace that holds every free
/// 2 MiB page, so that no fresh copy of it can be made. Session `op`.
fn operators_file_on_all_huge_pages(w: &mut World) -> Setup {
    let Some(reservation) = hugepages::Reservation::take(1) else {
        return Err(Skip("cannot reserve 2 MiB hugepages".to_owned()));
    };
    w.keep.push(Box::new(reservation));
    w.operator("op");
    let size = hugepages::free() * HUGE_PAGE;
    w.must(
        "op",
        &create_kind("huge", size, MemoryKind::Hugetlb2M, CreateFlags::empty()),
        &[],
    );
    assert_eq!(
        hugepages::free(),
        0,
        "another test took hugepages meanwhile"
    );
    Ok(())
}

/// Runs `f` while gmemd may make only `left` more fds (its soft
/// `RLIMIT_NOFILE` just above its lowest free fd number), then gives its
/// limit back. The hard limit stays: raising it again may take more than
/// root has in a container.
fn with_fds_left<T>(w: &mut World, left: u64, f: impl FnOnce(&mut World) -> T) -> T {
    let pid = w.daemon.pid();
    let open: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("gmemd's fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).expect("a free fd number");
    let hard = nofile_hard_limit(pid);
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
    let limit = |soft| Rlimit {
        current: Some(soft),
        maximum: hard,
    };
    let old = rustix::process::prlimit(pid, Resource::Nofile, limit(lowest_free + left))
        .expect("prlimit gmemd");
    let out = f(w);
    rustix::process::prlimit(pid, Resource::Nofile, old).expect("give gmemd its fds back");
    out
}

/// A process's hard `RLIMIT_NOFILE` (`None`: unlimited), from /proc.
fn nofile_hard_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let hard = line.split_whitespace().nth(4).expect("the hard limit");
    hard.parse().ok()
}

/// Three other processes (`--max-connections 3`) got a memory fd through
/// leases that have ended since, and still hold it: gmemd's table of
/// processes holding memory fds is full. Then vm-a's lease (key `a`).
fn holders_table_full(w: &mut World) -> Setup {
    for vm_name in ["holder-0", "holder-1", "holder-2"] {
        let mut tenant = spawn_tenant(
            &w.daemon,
            None,
            &["--vm", vm_name, "create:f:0x1000", "end-lease", "hold"],
        );
        tenant.wait_for_output("HOLDING", Duration::from_secs(30));
        w.keep.push(Box::new(tenant));
        // Its connection slot is free again once its lease is gone.
        let ops = &mut w.ops;
        wait_until(Duration::from_secs(10), "the holder's lease to end", || {
            let leases = ops.leases().expect("leases");
            (!leases.iter().any(|l| l.vm.name.as_str() == vm_name)).then_some(())
        });
    }
    w.lease("a", "vm-a");
    Ok(())
}

// Common set-ups.

/// vm-a's lease (key `a`) with a 1 MiB memfd `ram`.
fn a_with_ram(w: &mut World) -> Setup {
    w.lease("a", "vm-a");
    w.must("a", &create("ram", MIB), &[]);
    Ok(())
}

/// As [`a_with_ram`], `ram` bound in slot 5, and an operator session `op`.
fn a_with_bound_ram(w: &mut World) -> Setup {
    a_with_ram(w)?;
    w.must("a", &bind(5, 0x100_0000, "ram", 0, MIB), &[]);
    w.operator("op");
    Ok(())
}

/// vm-a, with a file `ram`, whose lease has ended (an orphan tied to root).
fn orphan_vm_a(w: &mut World) -> Setup {
    a_with_ram(w)?;
    w.conns.remove("a");
    let ops = &mut w.ops;
    wait_until(Duration::from_secs(10), "vm-a's lease to end", || {
        ops.leases().expect("leases").is_empty().then_some(())
    });
    Ok(())
}

fn a(w: &mut World) -> Setup {
    w.lease("a", "vm-a");
    Ok(())
}

fn op(w: &mut World) -> Setup {
    w.operator("op");
    Ok(())
}

/// uid 65534's control session (key `c`).
fn client_control(w: &mut World) -> Setup {
    w.client_control("c");
    Ok(())
}

/// A connection of root (key `x`) that has not said HELLO.
fn fresh(w: &mut World) -> Setup {
    w.fresh("x", None);
    Ok(())
}

/// A connection of uid 65533, which may not use gmemd (key `x`).
fn stranger(w: &mut World) -> Setup {
    w.fresh("x", Some(STRANGER));
    Ok(())
}

/// A session (key `s`) that negotiated every feature but `off`: a lease of
/// vm-a, or a control session; of root (an operator) or of uid 65534.
fn without(w: &mut World, off: Features, lease: bool, uid: Option<u32>) {
    let vm_name = lease.then_some("vm-a");
    w.session("s", uid, vm_name, Features::all() - off);
}

// ---------------------------------------------------------------------------
// §4.4, §5.1, §5.3 steps 1–5: framing, admission, syntax, and their order.

#[test]
fn framing_admission_and_syntax() {
    let eacces_then_closed = Expect::RefusedThenClosed(Errno::ACCESS, "uid 65533 is not allowed");
    run_table(
        "framing, admission and syntax",
        vec![
            // Step 1: a uid that is not allowed gets EACCES for anything,
            // first, and the connection is closed.
            row(
                "HELLO from a uid that is not allowed",
                stranger,
                |w| w.ask("x", &hello(Some("vm-x"), Features::all()), &[]),
                eacces_then_closed,
            ),
            row(
                "a REPLY-flagged message from a uid that is not allowed",
                stranger,
                |w| {
                    let payload = status(StatusSection::Files).encode();
                    let conn = w.conn("x");
                    let _ = send_message(
                        conn.stream.as_fd(),
                        Header::reply(STATUS, payload.len()),
                        &payload,
                        &[],
                    );
                    let answer = conn.reply(STATUS);
                    conn.outcome(answer)
                },
                eacces_then_closed,
            ),
            row(
                "an unknown code from a uid that is not allowed",
                stranger,
                |w| w.ask_raw("x", 99, &[], &[]),
                eacces_then_closed,
            ),
            row(
                "STATUS with an fd and a short payload from a uid that is not allowed",
                stranger,
                |w| {
                    let fd = memfd(0);
                    w.ask_raw("x", STATUS, &[0; 3], &[fd.as_fd()])
                },
                eacces_then_closed,
            ),
            // §4.4: closed without a reply.
            row(
                "header version bits 2",
                fresh,
                |w| {
                    let mut bytes = frame(STATUS, &status(StatusSection::Files).encode());
                    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
                    w.conn("x").write(&bytes);
                    w.answer("x", STATUS)
                },
                Expect::Closed,
            ),
            row(
                "a reserved header flag bit (0x100)",
                fresh,
                |w| {
                    let mut bytes = frame(STATUS, &status(StatusSection::Files).encode());
                    bytes[4..8].copy_from_slice(&0x101u32.to_le_bytes());
                    w.conn("x").write(&bytes);
                    w.answer("x", STATUS)
                },
                Expect::Closed,
            ),
            row(
                "a header announcing 4097 payload bytes",
                fresh,
                |w| {
                    let mut bytes = frame(STATUS, &[]);
                    bytes[8..12].copy_from_slice(&4097u32.to_le_bytes());
                    w.conn("x").write(&bytes);
                    w.answer("x", STATUS)
                },
                Expect::Closed,
            ),
            row("9 fds with one message", fresh, nine_fds, Expect::Closed),
            row(
                "fds sent with only 5 of the 12 header bytes",
                fresh,
                fds_with_a_split_header,
                Expect::Closed,
            ),
            // Step 2.
            row(
                "the REPLY flag on a request",
                a,
                |w| {
                    let payload = status(StatusSection::Files).encode();
                    let conn = w.conn("a");
                    let _ = send_message(
                        conn.stream.as_fd(),
                        Header::reply(STATUS, payload.len()),
                        &payload,
                        &[],
                    );
                    let answer = conn.reply(STATUS);
                    conn.outcome(answer)
                },
                refused(Errno::INVAL, "REPLY flag"),
            ),
            row(
                "the REPLY flag beats an unknown code (step 2 before 3)",
                a,
                |w| {
                    let conn = w.conn("a");
                    let _ = send_message(conn.stream.as_fd(), Header::reply(99, 0), &[], &[]);
                    let answer = conn.reply(99);
                    conn.outcome(answer)
                },
                refused(Errno::INVAL, "REPLY flag"),
            ),
            // Step 3.
            row(
                "unknown request code 99",
                a,
                |w| w.ask_raw("a", 99, &[1, 2, 3], &[]),
                refused(Errno::OPNOTSUPP, "unknown request code 99"),
            ),
            row(
                "request code 0 (a notice's)",
                a,
                |w| w.ask_raw("a", 0, &[], &[]),
                refused(Errno::OPNOTSUPP, "unknown request code 0"),
            ),
            row(
                "request code 16",
                a,
                |w| w.ask_raw("a", 16, &[], &[]),
                refused(Errno::OPNOTSUPP, "unknown request code 16"),
            ),
            row(
                "a marker code before HELLO (step 3 before 7)",
                fresh,
                |w| w.ask_raw("x", 0xffff_0000, &[], &[]),
                refused(Errno::OPNOTSUPP, "unknown request code 4294901760"),
            ),
            row(
                "an unknown code with an fd (step 3 before 4)",
                a,
                |w| {
                    let fd = memfd(0);
                    w.ask_raw("a", 99, &[], &[fd.as_fd()])
                },
                refused(Errno::OPNOTSUPP, "unknown request code 99"),
            ),
            // Step 4.
            row(
                "STATUS with an fd",
                a,
                |w| {
                    let fd = memfd(0);
                    w.ask("a", &status(StatusSection::Files), &[fd.as_fd()])
                },
                refused(Errno::BADF, "STATUS carries exactly 0 fd"),
            ),
            row(
                "CREATE with an fd",
                a,
                |w| {
                    let fd = memfd(0);
                    w.ask("a", &create("ram", MIB), &[fd.as_fd()])
                },
                refused(Errno::BADF, "CREATE carries exactly 0 fd"),
            ),
            row(
                "DEPOSIT without its fd",
                a,
                |w| w.ask("a", &deposit("ram", MemoryKind::Memfd), &[]),
                refused(Errno::BADF, "DEPOSIT carries exactly 1 fd"),
            ),
            row(
                "HANDOFF with two fds",
                a,
                |w| {
                    let (p1, p2) = (own_pidfd(), own_pidfd());
                    w.ask("a", &handoff(0), &[p1.as_fd(), p2.as_fd()])
                },
                refused(Errno::BADF, "HANDOFF carries exactly 1 fd"),
            ),
            row(
                "an fd and a short payload (step 4 before 5)",
                a,
                |w| {
                    let fd = memfd(0);
                    w.ask_raw("a", STATUS, &[0; 3], &[fd.as_fd()])
                },
                refused(Errno::BADF, "STATUS carries exactly 0 fd"),
            ),
            // Step 5: sizes.
            row(
                "BIND of 95 bytes",
                a,
                |w| w.ask_raw("a", code(Request::Bind), &[0; 95], &[]),
                refused(Errno::INVAL, "BIND payload must be 96 bytes, got 95"),
            ),
            row(
                "OPEN of 100 bytes (neither 64 nor 144)",
                a,
                |w| w.ask_raw("a", code(Request::Open), &[0; 100], &[]),
                refused(Errno::INVAL, "OPEN payload must be 64 bytes, got 100"),
            ),
            row(
                "RESTART with a payload",
                op,
                |w| w.ask_raw("op", code(Request::Restart), &[0; 8], &[]),
                refused(Errno::INVAL, "RESTART payload must be 0 bytes, got 8"),
            ),
            row(
                "a bad payload before HELLO (step 5 before 7)",
                fresh,
                |w| w.ask_raw("x", STATUS, &poke(&status(StatusSection::Files), 0, 9), &[]),
                refused(Errno::INVAL, "section: unknown value 9"),
            ),
            row(
                "STATUS of section 5",
                a,
                |w| w.ask_raw("a", STATUS, &poke(&status(StatusSection::Files), 0, 5), &[]),
                refused(Errno::INVAL, "section: unknown value 5"),
            ),
        ],
    );
}

fn nine_fds(w: &mut World) -> Outcome {
    let files: Vec<OwnedFd> = (0..9).map(|_| memfd(0)).collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    // The sending side refuses to build such a message: by hand.
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(9))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    let bytes = frame(STATUS, &status(StatusSection::Files).encode());
    let _ = rustix::net::sendmsg(
        &w.conn("x").stream,
        &[std::io::IoSlice::new(&bytes)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    );
    w.answer("x", STATUS)
}

fn fds_with_a_split_header(w: &mut World) -> Outcome {
    let fd = memfd(0);
    let bytes = frame(STATUS, &status(StatusSection::Files).encode());
    let conn = w.conn("x");
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    let _ = rustix::net::sendmsg(
        &conn.stream,
        &[std::io::IoSlice::new(&bytes[..5])],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    );
    conn.write(&bytes[5..]);
    w.answer("x", STATUS)
}

// ---------------------------------------------------------------------------
// §5.3 steps 6–7, §6.2, §6.4: the handshake and revoked leases.

#[test]
fn handshake_and_revoked_leases() {
    run_table(
        "handshake and revoked leases",
        vec![
            row(
                "STATUS before HELLO",
                fresh,
                |w| w.ask("x", &status(StatusSection::Files), &[]),
                refused(Errno::PROTO, "STATUS before HELLO"),
            ),
            row(
                "DEPOSIT before HELLO (step 7 before 8)",
                fresh,
                |w| {
                    let fd = memfd(4096);
                    w.ask("x", &deposit("ram", MemoryKind::Memfd), &[fd.as_fd()])
                },
                refused(Errno::PROTO, "DEPOSIT before HELLO"),
            ),
            row(
                "a second HELLO on a lease",
                a,
                |w| w.ask("a", &hello(Some("vm-b"), Features::all()), &[]),
                refused(Errno::PROTO, "already did its handshake"),
            ),
            row(
                "a second HELLO on a control session",
                op,
                |w| w.ask("op", &hello(None, Features::all()), &[]),
                refused(Errno::PROTO, "already did its handshake"),
            ),
            // §6.2: a failed HELLO leaves the connection awaiting HELLO.
            row(
                "HELLO retried after a failed HELLO is a HELLO again, not EPROTO",
                failed_hello,
                |w| w.ask("b", &hello(Some("vm-a"), Features::all()), &[]),
                refused(
                    Errno::BUSY,
                    "VM vm-a (266f834d-d2d9-896f-8fb1-83fd93cf1f56) already has lease 1",
                ),
            ),
            row(
                "a request after a failed HELLO is still before HELLO",
                failed_hello,
                |w| w.ask("b", &status(StatusSection::Files), &[]),
                refused(Errno::PROTO, "STATUS before HELLO"),
            ),
            // Step 6, §6.4: what was in flight when the lease was revoked.
            row(
                "a request in flight when its lease was revoked",
                |w| {
                    revoke_own_lease_then(
                        w,
                        &[frame(STATUS, &status(StatusSection::Files).encode())],
                    );
                    Ok(())
                },
                |w| w.answer("a", STATUS),
                Expect::RefusedThenClosed(Errno::CONNABORTED, "lease 1 was revoked"),
            ),
            row(
                "an unknown code in flight at a revoke (step 3 before 6)",
                |w| {
                    revoke_own_lease_then(w, &[frame(99, &[])]);
                    Ok(())
                },
                |w| w.answer("a", 99),
                Expect::RefusedThenClosed(Errno::OPNOTSUPP, "unknown request code 99"),
            ),
            row(
                "more than 1024 requests in flight at a revoke",
                |w| {
                    let status = frame(STATUS, &status(StatusSection::Files).encode());
                    revoke_own_lease_then(w, &vec![status; 1100]);
                    Ok(())
                },
                beyond_1024_aborted_replies,
                Expect::Closed,
            ),
        ],
    );
}

/// vm-a's lease (`a`) holds vm-a; root's connection `b` asked for vm-a too
/// and was refused `EBUSY`.
fn failed_hello(w: &mut World) -> Setup {
    w.lease("a", "vm-a");
    w.fresh("b", None);
    match w.conn("b").call(&hello(Some("vm-a"), Features::all()), &[]) {
        Answer::Refused { errno, .. } if errno == Errno::BUSY.raw_os_error() => Ok(()),
        other => panic!("HELLO for a leased VM: {other:?}"),
    }
}

/// vm-a's lease (`a`, root: an operator) revokes itself with `behind`
/// written in the same `write`, so those are in flight when the REVOKE
/// takes effect. Returns once the REVOKE's reply is read.
fn revoke_own_lease_then(w: &mut World, behind: &[Vec<u8>]) {
    w.lease("a", "vm-a");
    let mut bytes = frame(code(Request::Revoke), &revoke("vm-a").encode());
    for message in behind {
        bytes.extend_from_slice(message);
    }
    let conn = w.conn("a");
    conn.write(&bytes);
    match conn.reply(code(Request::Revoke)) {
        Answer::Done(_) => {}
        other => panic!("REVOKE of its own lease: {other:?}"),
    }
}

/// 1024 `ECONNABORTED` replies, then the connection closes (§6.4): what
/// the 1025th request got.
fn beyond_1024_aborted_replies(w: &mut World) -> Outcome {
    let conn = w.conn("a");
    for i in 0..1024 {
        match conn.reply(STATUS) {
            Answer::Refused { errno, .. } if errno == Errno::CONNABORTED.raw_os_error() => {}
            other => {
                return Outcome {
                    answer: Answer::Unexpected(format!("reply {i} of 1024: {other:?}")),
                    open_after: true,
                }
            }
        }
    }
    Outcome {
        answer: conn.reply(STATUS),
        open_after: false,
    }
}

// ---------------------------------------------------------------------------
// §5.3 step 8, §6.3: features not negotiated.

#[test]
fn features_not_negotiated() {
    const NOT_NEGOTIATED: &str = "needs a feature that was not negotiated";
    let eopnotsupp = |what: &'static str| refused(Errno::OPNOTSUPP, what);
    run_table(
        "features not negotiated",
        vec![
            row(
                "DEPOSIT without DEPOSIT",
                |w| {
                    without(w, Features::DEPOSIT, true, None);
                    Ok(())
                },
                |w| {
                    let fd = memfd(4096);
                    w.ask("s", &deposit("ram", MemoryKind::Memfd), &[fd.as_fd()])
                },
                eopnotsupp("DEPOSIT needs a feature"),
            ),
            row(
                "SCRUB without SCRUB",
                |w| {
                    without(w, Features::SCRUB, false, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("s", &scrub(own("ram")), &[]),
                eopnotsupp("SCRUB needs a feature"),
            ),
            row(
                "REVOKE without REVOKE, from a non-operator (step 8 before 9)",
                |w| {
                    w.lease("a", "vm-a");
                    without(w, Features::REVOKE, false, Some(CLIENT));
                    Ok(())
                },
                |w| w.ask("s", &revoke("vm-a"), &[]),
                eopnotsupp("REVOKE needs a feature"),
            ),
            row(
                "HANDOFF without HANDOFF",
                |w| {
                    without(w, Features::HANDOFF, true, None);
                    Ok(())
                },
                |w| {
                    let pidfd = own_pidfd();
                    w.ask("s", &handoff(0), &[pidfd.as_fd()])
                },
                eopnotsupp("HANDOFF needs a feature"),
            ),
            row(
                "RESTART without RESTART",
                |w| {
                    without(w, Features::RESTART, false, None);
                    Ok(())
                },
                |w| w.ask("s", &RequestBody::Restart, &[]),
                eopnotsupp("RESTART needs a feature"),
            ),
            row(
                "DEVICE without DEVICE",
                |w| {
                    without(w, Features::DEVICE, true, None);
                    Ok(())
                },
                |w| w.ask("s", &device(None, 1), &[]),
                eopnotsupp("DEVICE needs a feature"),
            ),
            row(
                "TRANSFER without VM_SCOPE",
                |w| {
                    w.lease("a", "vm-a");
                    without(w, Features::VM_SCOPE, false, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| {
                    w.ask(
                        "s",
                        &transfer(in_operators("ram"), in_vm("vm-a", "ram")),
                        &[],
                    )
                },
                eopnotsupp("TRANSFER needs a feature"),
            ),
            row(
                "FORGET without VM_SCOPE",
                |w| {
                    orphan_vm_a(w)?;
                    without(w, Features::VM_SCOPE, false, None);
                    Ok(())
                },
                |w| w.ask("s", &forget("vm-a"), &[]),
                eopnotsupp("FORGET needs a feature"),
            ),
            row(
                "STATUS section 2 without VM_SCOPE",
                |w| {
                    without(w, Features::VM_SCOPE, false, None);
                    Ok(())
                },
                |w| w.ask("s", &status(StatusSection::ScopedFiles), &[]),
                eopnotsupp("STATUS needs a feature"),
            ),
            row(
                "a 144-byte OPEN of its own VM's file without VM_SCOPE, on a lease",
                |w| {
                    without(w, Features::VM_SCOPE, true, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("s", &open(in_vm("vm-a", "ram")), &[]),
                eopnotsupp("OPEN needs a feature"),
            ),
            row(
                "a 144-byte OPEN without VM_SCOPE, operator",
                |w| {
                    without(w, Features::VM_SCOPE, false, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("s", &open(in_operators("ram")), &[]),
                eopnotsupp("OPEN needs a feature"),
            ),
            row(
                "a 144-byte DESTROY without VM_SCOPE, operator",
                |w| {
                    without(w, Features::VM_SCOPE, false, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("s", &destroy(in_operators("ram")), &[]),
                eopnotsupp("DESTROY needs a feature"),
            ),
            row(
                "a 144-byte SCRUB without VM_SCOPE, operator",
                |w| {
                    without(w, Features::VM_SCOPE, false, None);
                    w.must("s", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("s", &scrub(in_operators("ram")), &[]),
                eopnotsupp("SCRUB needs a feature"),
            ),
            // Step 8 (the feature) comes before step 9 (who may): a
            // non-operator is told EOPNOTSUPP, not EPERM.
            row(
                "a 144-byte OPEN without VM_SCOPE, non-operator control session",
                |w| {
                    a_with_ram(w)?;
                    without(w, Features::VM_SCOPE, false, Some(CLIENT));
                    Ok(())
                },
                |w| w.ask("s", &open(in_vm("vm-a", "ram")), &[]),
                eopnotsupp(NOT_NEGOTIATED),
            ),
            row(
                "a 144-byte DESTROY without VM_SCOPE, non-operator control session",
                |w| {
                    a_with_ram(w)?;
                    without(w, Features::VM_SCOPE, false, Some(CLIENT));
                    Ok(())
                },
                |w| w.ask("s", &destroy(in_vm("vm-a", "ram")), &[]),
                eopnotsupp(NOT_NEGOTIATED),
            ),
            row(
                "a 144-byte SCRUB without VM_SCOPE (SCRUB negotiated), non-operator",
                |w| {
                    a_with_ram(w)?;
                    without(w, Features::VM_SCOPE, false, Some(CLIENT));
                    Ok(())
                },
                |w| w.ask("s", &scrub(in_vm("vm-a", "ram")), &[]),
                eopnotsupp(NOT_NEGOTIATED),
            ),
            row(
                "CREATE flag PREFAULT without PREFAULT",
                |w| {
                    without(w, Features::PREFAULT, true, None);
                    Ok(())
                },
                |w| {
                    let body = create_kind("ram", MIB, MemoryKind::Memfd, CreateFlags::PREFAULT);
                    w.ask("s", &body, &[])
                },
                eopnotsupp("CREATE needs a feature"),
            ),
            row(
                "CREATE flag PREFAULT without PREFAULT, non-operator control (step 8 before 9)",
                |w| {
                    without(w, Features::PREFAULT, false, Some(CLIENT));
                    Ok(())
                },
                |w| {
                    let body = create_kind("ram", MIB, MemoryKind::Memfd, CreateFlags::PREFAULT);
                    w.ask("s", &body, &[])
                },
                eopnotsupp("CREATE needs a feature"),
            ),
            row(
                "STATUS section 4 without PREFAULT",
                |w| {
                    without(w, Features::PREFAULT, true, None);
                    Ok(())
                },
                |w| w.ask("s", &status(StatusSection::Memory), &[]),
                eopnotsupp("STATUS needs a feature"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §7.1 HELLO, §6.5.

#[test]
fn hello_refusals() {
    run_table(
        "HELLO",
        vec![
            row(
                "HELLO flag bit 1",
                fresh,
                |w| {
                    w.ask_raw(
                        "x",
                        1,
                        &poke(&hello(Some("vm-a"), Features::all()), 8, 2),
                        &[],
                    )
                },
                refused(Errno::INVAL, "HELLO flags: unknown flag bits 0x2"),
            ),
            row(
                "HELLO pad not zero",
                fresh,
                |w| {
                    w.ask_raw(
                        "x",
                        1,
                        &poke(&hello(Some("vm-a"), Features::all()), 12, 1),
                        &[],
                    )
                },
                refused(Errno::INVAL, "HELLO pad"),
            ),
            row(
                "VM HELLO with an all-zero UUID",
                fresh,
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 16, 16, &[]);
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::INVAL, "vm uuid"),
            ),
            row(
                "VM HELLO with a name starting with '.'",
                fresh,
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 32, 64, b".vm");
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::INVAL, "invalid vm name: starts with '.'"),
            ),
            row(
                "VM HELLO with a name not NUL-padded",
                fresh,
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 32, 64, b"vm\0a");
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::INVAL, "invalid vm name: not NUL-padded"),
            ),
            row(
                "control HELLO with a UUID",
                fresh,
                |w| {
                    let bytes = poke_field(&hello(None, Features::all()), 16, 16, &[7; 16]);
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::INVAL, "HELLO control identity"),
            ),
            row(
                "a bad HELLO for a leased VM (EINVAL before EBUSY)",
                |w| {
                    w.lease("a", "vm-a");
                    w.fresh("x", None);
                    Ok(())
                },
                |w| {
                    w.ask_raw(
                        "x",
                        1,
                        &poke(&hello(Some("vm-a"), Features::all()), 12, 1),
                        &[],
                    )
                },
                refused(Errno::INVAL, "HELLO pad"),
            ),
            row(
                "HELLO with a known VM's name and another UUID",
                |w| {
                    orphan_vm_a(w)?;
                    w.fresh("x", None);
                    Ok(())
                },
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 16, 16, &[7; 16]);
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::EXIST, "VM name vm-a belongs to VM"),
            ),
            row(
                "HELLO with a known VM's UUID and another name",
                |w| {
                    orphan_vm_a(w)?;
                    w.fresh("x", None);
                    Ok(())
                },
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 32, 64, b"vm-z");
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::EXIST, "is named vm-a"),
            ),
            // §7.1: whose the VM is comes before what it is, so another
            // principal never learns the VM's UUID from the EEXIST text.
            row(
                "another principal's VM name with another UUID (EACCES before EEXIST)",
                |w| {
                    orphan_vm_a(w)?;
                    w.fresh("x", Some(CLIENT));
                    Ok(())
                },
                |w| {
                    let bytes = poke_field(&hello(Some("vm-a"), Features::all()), 16, 16, &[7; 16]);
                    w.ask_raw("x", 1, &bytes, &[])
                },
                refused(Errno::ACCESS, "VM vm-a belongs to another principal"),
            ),
            row(
                "HELLO for another principal's VM",
                |w| {
                    orphan_vm_a(w)?;
                    w.fresh("x", Some(CLIENT));
                    Ok(())
                },
                |w| w.ask_raw("x", 1, &hello(Some("vm-a"), Features::all()).encode(), &[]),
                refused(
                    Errno::ACCESS,
                    "VM 266f834d-d2d9-896f-8fb1-83fd93cf1f56 belongs to another principal",
                ),
            ),
            row(
                "HELLO for another principal's leased VM (EACCES before EBUSY)",
                |w| {
                    w.lease("a", "vm-a");
                    w.fresh("x", Some(CLIENT));
                    Ok(())
                },
                |w| w.ask("x", &hello(Some("vm-a"), Features::all()), &[]),
                refused(Errno::ACCESS, "belongs to another principal"),
            ),
            row(
                "HELLO for a VM that has a lease",
                |w| {
                    w.lease("a", "vm-a");
                    w.fresh("x", None);
                    Ok(())
                },
                |w| w.ask("x", &hello(Some("vm-a"), Features::all()), &[]),
                refused(Errno::BUSY, "already has lease 1 (pid"),
            ),
            row(
                "a new VM's first lease that does not match its cgroup pattern (operator too)",
                fresh,
                |w| w.ask("x", &hello(Some("vm-a"), Features::all()), &[]),
                refused(Errno::ACCESS, "does not match VM vm-a's principal"),
            )
            .args(&[
                "--principal",
                "uid+cgroup",
                "--cgroup-pattern",
                "/no-such-cgroup/{vm}",
            ]),
            row(
                "a new VM's first lease without the security label --principal uid+label needs",
                |w| {
                    if peers_have_labels() {
                        return Err(Skip(
                            "this host's LSM labels every peer: no label is ever missing"
                                .to_owned(),
                        ));
                    }
                    fresh(w)
                },
                |w| w.ask("x", &hello(Some("vm-a"), Features::all()), &[]),
                refused(
                    Errno::ACCESS,
                    "security label of the connecting process cannot be read",
                ),
            )
            .args(&["--principal", "uid+label"]),
        ],
    );
}

/// Whether gmemd would read a security label for a peer here (an LSM
/// labels sockets), as it reads one at accept.
fn peers_have_labels() -> bool {
    let (ours, _theirs) = UnixStream::pair().expect("socketpair");
    gmemd::peer::principal_of(&ours, gmemd::ledger::Peer::default())
        .label
        .is_some()
}

// ---------------------------------------------------------------------------
// §7.2 CREATE, §7.3 OPEN.

#[test]
fn create_refusals() {
    run_table(
        "CREATE",
        vec![
            row(
                "CREATE from a non-operator control session",
                client_control,
                |w| w.ask("c", &create("ram", MIB), &[]),
                refused(Errno::PERM, "CREATE is an operator request and uid 65534"),
            ),
            row(
                "CREATE of an operators' file that exists, non-operator (EPERM before EEXIST)",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &create("ram", MIB), &[]),
                refused(Errno::PERM, "CREATE is an operator request"),
            ),
            row(
                "CREATE of a name that exists",
                a_with_ram,
                |w| w.ask("a", &create("ram", MIB), &[]),
                refused(Errno::EXIST, "memory file vm-a/ram already exists"),
            ),
            row(
                "CREATE of a name that exists, size 0 (the name is looked up first)",
                a_with_ram,
                |w| w.ask("a", &create("ram", 0), &[]),
                refused(Errno::EXIST, "memory file vm-a/ram already exists"),
            ),
            row(
                "CREATE OPEN_EXISTING of a file with another size",
                a_with_ram,
                |w| {
                    let body = create_kind(
                        "ram",
                        2 * MIB,
                        MemoryKind::Memfd,
                        CreateFlags::OPEN_EXISTING,
                    );
                    w.ask("a", &body, &[])
                },
                refused(Errno::EXIST, "vm-a/ram exists as memfd, 1048576 bytes"),
            ),
            row(
                "CREATE OPEN_EXISTING of a file with another kind",
                a_with_ram,
                |w| {
                    let body =
                        create_kind("ram", MIB, MemoryKind::Secret, CreateFlags::OPEN_EXISTING);
                    w.ask("a", &body, &[])
                },
                refused(Errno::EXIST, "vm-a/ram exists as memfd"),
            ),
            row(
                "CREATE OPEN_EXISTING of a guest_memfd",
                a_with_guest_memfd,
                |w| {
                    let body = create_kind(
                        "gmem",
                        2 * MIB,
                        MemoryKind::GuestMemfd,
                        CreateFlags::OPEN_EXISTING,
                    );
                    w.ask("a", &body, &[])
                },
                refused(Errno::PERM, "vm-a/gmem is a guest_memfd"),
            ),
            row(
                "CREATE of kind guest_memfd",
                a,
                |w| {
                    let body =
                        create_kind("ram", MIB, MemoryKind::GuestMemfd, CreateFlags::empty());
                    w.ask("a", &body, &[])
                },
                refused(
                    Errno::INVAL,
                    "guest_memfd files are created by their VM's VMM",
                ),
            ),
            row(
                "CREATE of size 0",
                a,
                |w| w.ask("a", &create("ram", 0), &[]),
                refused(Errno::INVAL, "size 0x0 is not a non-zero multiple"),
            ),
            row(
                "CREATE of 4097 bytes",
                a,
                |w| w.ask("a", &create("ram", 4097), &[]),
                refused(Errno::INVAL, "size 0x1001 is not a non-zero multiple"),
            ),
            row(
                "CREATE of a hugetlb-2m file of 1 MiB",
                a,
                |w| {
                    let body = create_kind("ram", MIB, MemoryKind::Hugetlb2M, CreateFlags::empty());
                    w.ask("a", &body, &[])
                },
                refused(
                    Errno::INVAL,
                    "size 0x100000 is not a non-zero multiple of the 2 MiB",
                ),
            ),
            row(
                "CREATE of 2^64-1 bytes is EINVAL, not ENOSPC",
                a,
                |w| w.ask("a", &create("ram", u64::MAX), &[]),
                refused(Errno::INVAL, "size 0xffffffffffffffff"),
            )
            .args(&["--max-memory", "1M"]),
            row(
                "CREATE flag bit 2",
                a,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Create),
                        &poke(&create("ram", MIB), 12, 4),
                        &[],
                    )
                },
                refused(Errno::INVAL, "CREATE flags: unknown flag bits 0x4"),
            ),
            row(
                "CREATE of kind 9",
                a,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Create),
                        &poke(&create("ram", MIB), 8, 9),
                        &[],
                    )
                },
                refused(Errno::INVAL, "kind: unknown value 9"),
            ),
            row(
                "CREATE of a name with a '/'",
                a,
                |w| {
                    let bytes = poke_field(&create("ram", MIB), 16, 64, b"a/b");
                    w.ask_raw("a", code(Request::Create), &bytes, &[])
                },
                refused(Errno::INVAL, "invalid file name"),
            ),
            row(
                "CREATE of a secret file where memfd_secret is missing",
                |w| {
                    if secret_memory_works() {
                        return Err(Skip(
                            "memfd_secret works on this host: ENOSYS cannot happen".to_owned(),
                        ));
                    }
                    a(w)
                },
                |w| {
                    let body = create_kind("ram", MIB, MemoryKind::Secret, CreateFlags::empty());
                    w.ask("a", &body, &[])
                },
                refused(Errno::NOSYS, "memfd_secret"),
            ),
        ],
    );
}

#[test]
fn open_refusals() {
    run_table(
        "OPEN",
        vec![
            row(
                "OPEN from a non-operator control session",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &open(own("ram")), &[]),
                refused(Errno::PERM, "OPEN is an operator request and uid 65534"),
            ),
            row(
                "OPEN of another VM's file by a non-operator",
                |w| {
                    a_with_ram(w)?;
                    w.client_lease("n", "vm-n");
                    Ok(())
                },
                |w| w.ask("n", &open(in_vm("vm-a", "ram")), &[]),
                refused(Errno::PERM, "OPEN is an operator request and uid 65534"),
            ),
            row(
                "OPEN of an unknown VM's file by a non-operator (EPERM before ENOENT)",
                |w| {
                    w.client_lease("n", "vm-n");
                    Ok(())
                },
                |w| w.ask("n", &open(in_vm("ghost", "ram")), &[]),
                refused(Errno::PERM, "OPEN is an operator request"),
            ),
            row(
                "OPEN of an operators' file by a non-operator lease",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.client_lease("n", "vm-n");
                    Ok(())
                },
                |w| w.ask("n", &open(in_operators("ram")), &[]),
                refused(Errno::PERM, "OPEN is an operator request"),
            ),
            row(
                "OPEN in an unknown VM",
                op,
                |w| w.ask("op", &open(in_vm("ghost", "ram")), &[]),
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "OPEN of a file that does not exist",
                a,
                |w| w.ask("a", &open(own("nope")), &[]),
                refused(Errno::NOENT, "no memory file vm-a/nope"),
            ),
            row(
                "OPEN of an operators' file that does not exist",
                op,
                |w| w.ask("op", &open(own("nope")), &[]),
                refused(Errno::NOENT, "no memory file nope"),
            ),
            row(
                "OPEN of a guest_memfd",
                a_with_guest_memfd,
                |w| w.ask("a", &open(own("gmem")), &[]),
                refused(Errno::PERM, "vm-a/gmem is a guest_memfd"),
            ),
            row(
                "OPEN of a guest_memfd by an operator",
                |w| {
                    a_with_guest_memfd(w)?;
                    w.operator("op");
                    Ok(())
                },
                |w| w.ask("op", &open(in_vm("vm-a", "gmem")), &[]),
                refused(Errno::PERM, "vm-a/gmem is a guest_memfd"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §7.4 BIND, §7.5 UNBIND.

#[test]
fn bind_and_unbind_refusals() {
    /// vm-a's lease with `ram` (4 MiB) bound in slot 5 at 16 MiB and `other` (1 MiB).
    fn bound(w: &mut World) -> Setup {
        w.lease("a", "vm-a");
        w.must("a", &create("ram", 4 * MIB), &[]);
        w.must("a", &create("other", MIB), &[]);
        w.must("a", &bind(5, 0x100_0000, "ram", 0, MIB), &[]);
        Ok(())
    }
    run_table(
        "BIND and UNBIND",
        vec![
            row(
                "BIND on a control session",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| w.ask("op", &bind(0, 0, "ram", 0, MIB), &[]),
                refused(Errno::PERM, "BIND needs a VM lease"),
            ),
            row(
                "BIND flags not zero",
                bound,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Bind),
                        &poke(&bind(0, 0, "other", 0, MIB), 4, 1),
                        &[],
                    )
                },
                refused(Errno::INVAL, "BIND flags"),
            ),
            row(
                "BIND of a file that does not exist",
                bound,
                |w| w.ask("a", &bind(6, 0, "nope", 0, 4096), &[]),
                refused(Errno::NOENT, "no memory file vm-a/nope"),
            ),
            row(
                "BIND of another VM's file (it is not in this namespace)",
                |w| {
                    a_with_ram(w)?;
                    w.lease("b", "vm-b");
                    Ok(())
                },
                |w| w.ask("b", &bind(0, 0, "ram", 0, 4096), &[]),
                refused(Errno::NOENT, "no memory file vm-b/ram"),
            ),
            row(
                "BIND at a misaligned offset",
                bound,
                |w| w.ask("a", &bind(6, 0, "ram", MIB + 100, 4096), &[]),
                refused(Errno::INVAL, "offset 0x100064 is not aligned"),
            ),
            row(
                "BIND of a misaligned size",
                bound,
                |w| w.ask("a", &bind(6, 0, "ram", MIB, 100), &[]),
                refused(Errno::INVAL, "size 0x64 is not aligned"),
            ),
            row(
                "BIND at a misaligned gpa",
                bound,
                |w| w.ask("a", &bind(6, 0x123, "ram", MIB, 4096), &[]),
                refused(Errno::INVAL, "gpa 0x123 is not aligned"),
            ),
            row(
                "BIND with offset, size and gpa misaligned (offset first)",
                bound,
                |w| w.ask("a", &bind(6, 0x123, "ram", MIB + 1, 100), &[]),
                refused(Errno::INVAL, "offset 0x100001"),
            ),
            row(
                "BIND of 0 bytes",
                bound,
                |w| w.ask("a", &bind(6, 0, "other", 0, 0), &[]),
                refused(Errno::INVAL, "at least one page"),
            ),
            row(
                "BIND past the end of the file",
                bound,
                |w| w.ask("a", &bind(6, 0, "ram", 3 * MIB, 2 * MIB), &[]),
                refused(Errno::RANGE, "ends past the 0x400000-byte file vm-a/ram"),
            ),
            row(
                "BIND with offset + size overflowing",
                bound,
                |w| w.ask("a", &bind(6, 0, "ram", u64::MAX - 4095, 8192), &[]),
                refused(Errno::RANGE, "ends past the 0x400000-byte file vm-a/ram"),
            ),
            row(
                "BIND with gpa + size overflowing",
                bound,
                |w| w.ask("a", &bind(6, u64::MAX - 4095, "other", 0, 8192), &[]),
                refused(
                    Errno::OVERFLOW,
                    "guest range 0xfffffffffffff000+0x2000 overflows",
                ),
            ),
            row(
                "BIND of a file range another slot binds",
                bound,
                |w| w.ask("a", &bind(6, 0, "ram", MIB - 4096, 8192), &[]),
                refused(Errno::BUSY, "of vm-a/ram overlaps the binding in slot 5"),
            ),
            row(
                "BIND into a taken slot, overlapping another slot's file range (EBUSY first)",
                |w| {
                    bound(w)?;
                    w.must("a", &bind(6, 0, "other", 0, 4096), &[]);
                    Ok(())
                },
                |w| w.ask("a", &bind(6, 0x10_0000, "ram", 0, 4096), &[]),
                refused(Errno::BUSY, "overlaps the binding in slot 5"),
            ),
            row(
                "BIND into a slot that is bound",
                bound,
                |w| w.ask("a", &bind(5, 0, "other", 0, 4096), &[]),
                refused(Errno::EXIST, "slot 5 is already bound"),
            ),
            row(
                "the same BIND again (its own range in its own slot is EEXIST)",
                bound,
                |w| w.ask("a", &bind(5, 0x100_0000, "ram", 0, MIB), &[]),
                refused(Errno::EXIST, "slot 5 is already bound"),
            ),
            row(
                "a 65th binding of one file",
                |w| {
                    w.lease("a", "vm-a");
                    w.must("a", &create("ram", 65 * 4096), &[]);
                    for slot in 0..64 {
                        let at = u64::from(slot) * 4096;
                        w.must("a", &bind(slot, at, "ram", at, 4096), &[]);
                    }
                    Ok(())
                },
                |w| w.ask("a", &bind(64, 64 * 4096, "ram", 64 * 4096, 4096), &[]),
                refused(Errno::NOSPC, "vm-a/ram already has 64 bindings"),
            ),
            row(
                "BIND of a guest range another slot holds",
                bound,
                |w| w.ask("a", &bind(6, 0x100_0000 + 4096, "other", 0, 4096), &[]),
                refused(Errno::ADDRINUSE, "overlaps slot 5"),
            ),
            row(
                "UNBIND on a control session",
                op,
                |w| w.ask("op", &RequestBody::Unbind { slot: 0 }, &[]),
                refused(Errno::PERM, "UNBIND needs a VM lease"),
            ),
            row(
                "UNBIND of a slot that is not bound",
                bound,
                |w| w.ask("a", &RequestBody::Unbind { slot: 9 }, &[]),
                refused(Errno::NOENT, "slot 9 is not bound"),
            ),
            row(
                "UNBIND pad not zero",
                bound,
                |w| {
                    let bytes = poke(&RequestBody::Unbind { slot: 5 }, 4, 1);
                    w.ask_raw("a", code(Request::Unbind), &bytes, &[])
                },
                refused(Errno::INVAL, "UNBIND pad"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §7.6 DEPOSIT.

#[test]
fn deposit_refusals() {
    run_table(
        "DEPOSIT",
        vec![
            row(
                "DEPOSIT of a guest_memfd on a control session (operator)",
                op,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "op", &deposit("ram", MemoryKind::GuestMemfd), &fd)
                },
                refused(Errno::PERM, "DEPOSIT needs a VM lease"),
            ),
            row(
                "DEPOSIT of a memfd on a non-operator control session",
                client_control,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "c", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::PERM, "DEPOSIT is an operator request and uid 65534"),
            ),
            row(
                "DEPOSIT under a name that exists",
                a_with_ram,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::EXIST, "memory file vm-a/ram already exists"),
            ),
            row(
                "DEPOSIT of a plain file under a name that exists (EEXIST before EINVAL)",
                a_with_ram,
                |w| {
                    let file: OwnedFd = tempfile::tempfile().expect("temp file").into();
                    w.ask("a", &deposit("ram", MemoryKind::Memfd), &[file.as_fd()])
                },
                refused(Errno::EXIST, "memory file vm-a/ram already exists"),
            ),
            row(
                "DEPOSIT of kind hugetlb-2m",
                a,
                |w| {
                    let fd = memfd(2 * MIB);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Hugetlb2M), &fd)
                },
                refused(Errno::INVAL, "hugetlb-2m files cannot be deposited"),
            ),
            row(
                "DEPOSIT of kind hugetlb-1g",
                a,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Hugetlb1G), &fd)
                },
                refused(Errno::INVAL, "hugetlb-1g files cannot be deposited"),
            ),
            row(
                "DEPOSIT of kind secret",
                a,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Secret), &fd)
                },
                refused(Errno::INVAL, "secret files cannot be deposited"),
            ),
            row(
                "DEPOSIT of kind 9",
                a,
                |w| {
                    let fd = memfd(4096);
                    let bytes = poke(&deposit("ram", MemoryKind::Memfd), 0, 9);
                    w.ask_raw("a", code(Request::Deposit), &bytes, &[fd.as_fd()])
                },
                refused(Errno::INVAL, "kind: unknown value 9"),
            ),
            row(
                "DEPOSIT flags not zero",
                a,
                |w| {
                    let fd = memfd(4096);
                    let bytes = poke(&deposit("ram", MemoryKind::Memfd), 4, 1);
                    w.ask_raw("a", code(Request::Deposit), &bytes, &[fd.as_fd()])
                },
                refused(Errno::INVAL, "DEPOSIT flags"),
            ),
            row(
                "DEPOSIT of a plain file as a memfd",
                a,
                |w| {
                    let file: OwnedFd = tempfile::tempfile().expect("temp file").into();
                    w.ask("a", &deposit("ram", MemoryKind::Memfd), &[file.as_fd()])
                },
                refused(Errno::INVAL, "not a memfd"),
            ),
            row(
                "DEPOSIT of a hugetlb memfd",
                |w| {
                    let made = rustix::fs::memfd_create(
                        "errno-table",
                        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
                    );
                    needs(made.is_ok(), "memfd_create(MFD_HUGETLB)")?;
                    a(w)
                },
                |w| {
                    let fd = rustix::fs::memfd_create(
                        "errno-table",
                        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
                    )
                    .expect("checked in the set-up");
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::INVAL, "on hugetlbfs"),
            ),
            row(
                "DEPOSIT of a memfd made without MFD_ALLOW_SEALING (F_SEAL_SEAL only)",
                a,
                |w| {
                    let fd = memfd_with(4096, MemfdFlags::CLOEXEC);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(
                    Errno::INVAL,
                    "sealed against further seals but still resizable",
                ),
            ),
            row(
                "DEPOSIT of a memfd sealed SHRINK|SEAL but not GROW",
                a,
                |w| {
                    let fd = memfd(4096);
                    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)
                        .expect("seal");
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(
                    Errno::INVAL,
                    "sealed against further seals but still resizable",
                ),
            ),
            row(
                "DEPOSIT of a memfd as a guest_memfd",
                a,
                |w| {
                    let fd = memfd(4096);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::GuestMemfd), &fd)
                },
                refused(Errno::INVAL, "not a guest_memfd"),
            ),
            row(
                "DEPOSIT of a memfd of 4097 bytes",
                a,
                |w| {
                    let fd = memfd(4097);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::INVAL, "size 0x1001 is not a non-zero multiple"),
            ),
            row(
                "DEPOSIT of an empty memfd",
                a,
                |w| {
                    let fd = memfd(0);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::INVAL, "size 0x0 is not a non-zero multiple"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §7.7 DESTROY, §7.9 REVOKE, §7.10 SCRUB, §7.12 TRANSFER, §7.13 FORGET,
// §7.14 RESTART.

#[test]
fn destroy_refusals() {
    run_table(
        "DESTROY",
        vec![
            row(
                "DESTROY from a non-operator control session",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &destroy(own("ram")), &[]),
                refused(Errno::PERM, "DESTROY is an operator request and uid 65534"),
            ),
            row(
                "DESTROY of another VM's file by a non-operator",
                |w| {
                    a_with_ram(w)?;
                    w.client_lease("n", "vm-n");
                    Ok(())
                },
                |w| w.ask("n", &destroy(in_vm("vm-a", "ram")), &[]),
                refused(Errno::PERM, "DESTROY is an operator request and uid 65534"),
            ),
            row(
                "DESTROY in an unknown VM",
                op,
                |w| w.ask("op", &destroy(in_vm("ghost", "ram")), &[]),
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "DESTROY of a file that does not exist",
                a,
                |w| w.ask("a", &destroy(own("nope")), &[]),
                refused(Errno::NOENT, "no memory file vm-a/nope"),
            ),
            row(
                "DESTROY of its own bound file by a non-operator",
                |w| {
                    w.client_lease("n", "vm-n");
                    w.must("n", &create("ram", MIB), &[]);
                    w.must("n", &bind(0, 0, "ram", 0, MIB), &[]);
                    Ok(())
                },
                |w| w.ask("n", &destroy(own("ram")), &[]),
                refused(Errno::BUSY, "memory file vm-n/ram is bound in 1 slot(s)"),
            ),
        ],
    );
}

#[test]
fn operator_request_refusals() {
    run_table(
        "REVOKE, SCRUB, TRANSFER, FORGET, RESTART",
        vec![
            // REVOKE
            row(
                "REVOKE by a non-operator",
                |w| {
                    w.lease("a", "vm-a");
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &revoke("vm-a"), &[]),
                refused(Errno::PERM, "REVOKE is an operator request and uid 65534"),
            ),
            row(
                "REVOKE of a known VM without a lease",
                |w| {
                    orphan_vm_a(w)?;
                    w.operator("op");
                    Ok(())
                },
                |w| w.ask("op", &revoke("vm-a"), &[]),
                refused(Errno::NOENT, "no open lease for VM vm-a"),
            ),
            row(
                "REVOKE of an unknown VM",
                op,
                |w| w.ask("op", &revoke("ghost"), &[]),
                refused(Errno::NOENT, "no open lease for VM ghost"),
            ),
            row(
                "REVOKE of an ambiguous selector (UUID and name both set)",
                |w| {
                    w.lease("a", "vm-a");
                    w.operator("op");
                    Ok(())
                },
                |w| {
                    let bytes = poke_field(&revoke("vm-a"), 0, 16, &vm("vm-a").uuid.0);
                    w.ask_raw("op", code(Request::Revoke), &bytes, &[])
                },
                refused(Errno::INVAL, "VM name with uuid"),
            ),
            row(
                "REVOKE of an empty selector (no UUID, no name)",
                op,
                |w| w.ask_raw("op", code(Request::Revoke), &[0; 80], &[]),
                refused(Errno::INVAL, "invalid vm name: empty"),
            ),
            // SCRUB
            row(
                "SCRUB by a non-operator",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &scrub(own("ram")), &[]),
                refused(Errno::PERM, "SCRUB is an operator request and uid 65534"),
            ),
            row(
                "SCRUB of a file that does not exist",
                op,
                |w| w.ask("op", &scrub(own("nope")), &[]),
                refused(Errno::NOENT, "no memory file nope"),
            ),
            row(
                "SCRUB in an unknown VM",
                op,
                |w| w.ask("op", &scrub(in_vm("ghost", "ram")), &[]),
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "SCRUB of a bound file",
                a_with_bound_ram,
                |w| w.ask("op", &scrub(in_vm("vm-a", "ram")), &[]),
                refused(
                    Errno::BUSY,
                    "memory file vm-a/ram is bound in 1 slot(s) by VM vm-a",
                ),
            ),
            row(
                "SCRUB of a hugetlb file with no free page for its fresh copy",
                operators_file_on_all_huge_pages,
                |w| w.ask("op", &scrub(own("huge")), &[]),
                refused(Errno::NOMEM, "nr_hugepages"),
            ),
            row(
                "SCRUB of a secret file where memfd_secret is missing",
                |_| {
                    Err(Skip(
                        "a secret file exists only where memfd_secret works, and then so does \
                         its fresh copy: ENOSYS cannot happen"
                            .to_owned(),
                    ))
                },
                |w| w.ask("op", &scrub(own("secret")), &[]),
                refused(Errno::NOSYS, "memfd_secret"),
            ),
            // TRANSFER
            row(
                "TRANSFER by a non-operator",
                |w| {
                    a_with_ram(w)?;
                    w.client_control("c");
                    Ok(())
                },
                |w| {
                    w.ask(
                        "c",
                        &transfer(in_vm("vm-a", "ram"), in_operators("ram")),
                        &[],
                    )
                },
                refused(Errno::PERM, "TRANSFER is an operator request and uid 65534"),
            ),
            row(
                "TRANSFER from an unknown VM",
                op,
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_vm("ghost", "ram"), in_operators("ram")),
                        &[],
                    )
                },
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "TRANSFER to an unknown VM",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_operators("ram"), in_vm("ghost", "ram")),
                        &[],
                    )
                },
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "TRANSFER of a file that does not exist",
                |w| {
                    w.lease("a", "vm-a");
                    w.operator("op");
                    Ok(())
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_vm("vm-a", "nope"), in_operators("ram")),
                        &[],
                    )
                },
                refused(Errno::NOENT, "no memory file vm-a/nope"),
            ),
            row(
                "TRANSFER of a bound file",
                a_with_bound_ram,
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_vm("vm-a", "ram"), in_operators("ram")),
                        &[],
                    )
                },
                refused(Errno::BUSY, "memory file vm-a/ram is bound in 1 slot(s)"),
            ),
            row(
                "TRANSFER of a bound file onto a name that exists (EBUSY before EEXIST)",
                |w| {
                    a_with_bound_ram(w)?;
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_vm("vm-a", "ram"), in_operators("ram")),
                        &[],
                    )
                },
                refused(Errno::BUSY, "memory file vm-a/ram is bound"),
            ),
            row(
                "TRANSFER of a guest_memfd",
                |w| {
                    a_with_guest_memfd(w)?;
                    w.operator("op");
                    Ok(())
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_vm("vm-a", "gmem"), in_operators("gmem")),
                        &[],
                    )
                },
                refused(Errno::PERM, "vm-a/gmem is a guest_memfd"),
            ),
            row(
                "TRANSFER onto a name that exists",
                |w| {
                    a_with_ram(w)?;
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_operators("ram"), in_vm("vm-a", "ram")),
                        &[],
                    )
                },
                refused(Errno::EXIST, "memory file vm-a/ram already exists"),
            ),
            row(
                "TRANSFER with a destination naming both a UUID and a VM name",
                |w| {
                    a(w)?;
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| {
                    let body = transfer(in_operators("ram"), in_vm("vm-a", "ram"));
                    let bytes = poke_field(&body, 144, 16, &vm("vm-a").uuid.0);
                    w.ask_raw("op", code(Request::Transfer), &bytes, &[])
                },
                refused(Errno::INVAL, "scope name with uuid"),
            ),
            row(
                "TRANSFER of a hugetlb file with no free page for its fresh copy",
                |w| {
                    operators_file_on_all_huge_pages(w)?;
                    a(w)
                },
                |w| {
                    w.ask(
                        "op",
                        &transfer(in_operators("huge"), in_vm("vm-a", "huge")),
                        &[],
                    )
                },
                refused(Errno::NOMEM, "nr_hugepages"),
            ),
            // FORGET
            row(
                "FORGET by a non-operator",
                |w| {
                    orphan_vm_a(w)?;
                    w.client_control("c");
                    Ok(())
                },
                |w| w.ask("c", &forget("vm-a"), &[]),
                refused(Errno::PERM, "FORGET is an operator request and uid 65534"),
            ),
            row(
                "FORGET of an unknown VM",
                op,
                |w| w.ask("op", &forget("ghost"), &[]),
                refused(Errno::NOENT, "no VM ghost is known"),
            ),
            row(
                "FORGET of a VM that has a lease",
                |w| {
                    a_with_ram(w)?;
                    w.operator("op");
                    Ok(())
                },
                |w| w.ask("op", &forget("vm-a"), &[]),
                refused(Errno::BUSY, "has lease 1"),
            ),
            row(
                "FORGET of an ambiguous selector (UUID and name both set)",
                |w| {
                    orphan_vm_a(w)?;
                    w.operator("op");
                    Ok(())
                },
                |w| {
                    let bytes = poke_field(&forget("vm-a"), 0, 16, &vm("vm-a").uuid.0);
                    w.ask_raw("op", code(Request::Forget), &bytes, &[])
                },
                refused(Errno::INVAL, "VM name with uuid"),
            ),
            // RESTART
            row(
                "RESTART by a non-operator",
                client_control,
                |w| w.ask("c", &RequestBody::Restart, &[]),
                refused(Errno::PERM, "RESTART is an operator request and uid 65534"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §7.11 HANDOFF, §7.15 DEVICE.

#[test]
fn handoff_and_device_refusals() {
    run_table(
        "HANDOFF and DEVICE",
        vec![
            row(
                "HANDOFF on a control session",
                op,
                |w| {
                    let pidfd = own_pidfd();
                    w.ask("op", &handoff(0), &[pidfd.as_fd()])
                },
                refused(Errno::PERM, "HANDOFF needs a VM lease"),
            ),
            row(
                "HANDOFF of an fd that is no pidfd",
                a,
                |w| {
                    let fd = memfd(0);
                    w.ask("a", &handoff(0), &[fd.as_fd()])
                },
                refused(Errno::INVAL, "HANDOFF needs the pidfd of a live process"),
            ),
            row(
                "HANDOFF to a process that has exited",
                a,
                |w| {
                    let pidfd = dead_pidfd();
                    w.ask("a", &handoff(0), &[pidfd.as_fd()])
                },
                refused(Errno::SRCH, "HANDOFF needs the pidfd of a live process"),
            ),
            row(
                "HANDOFF naming an fd that is not the lease's socket",
                |w| {
                    w.lease("a", "vm-a");
                    w.operator("op");
                    Ok(())
                },
                |w| {
                    // This process holds another connection to gmemd as `op`.
                    let other = w.conn("op").stream.as_raw_fd();
                    let pidfd = own_pidfd();
                    let fd = u32::try_from(other).expect("fd number");
                    w.ask("a", &handoff(fd), &[pidfd.as_fd()])
                },
                refused(Errno::PERM, "does not hold this lease's socket as its fd"),
            ),
            row(
                "HANDOFF flags not zero",
                a,
                |w| {
                    let pidfd = own_pidfd();
                    let bytes = poke(&handoff(0), 4, 1);
                    w.ask_raw("a", code(Request::Handoff), &bytes, &[pidfd.as_fd()])
                },
                refused(Errno::INVAL, "HANDOFF flags"),
            ),
            row(
                "DEVICE on a control session",
                op,
                |w| w.ask("op", &device(None, 1), &[]),
                refused(Errno::PERM, "DEVICE needs a VM lease"),
            ),
            row(
                "DEVICE with a disk that does not exist",
                a,
                |w| w.ask("a", &device(Some("nope"), 1), &[]),
                refused(Errno::NOENT, "no memory file vm-a/nope"),
            ),
            row(
                "DEVICE with a disk that is no memfd",
                |w| {
                    needs(secret_memory_works(), "memfd_secret")?;
                    w.lease("a", "vm-a");
                    let body = create_kind("disk", MIB, MemoryKind::Secret, CreateFlags::empty());
                    w.must("a", &body, &[]);
                    Ok(())
                },
                |w| w.ask("a", &device(Some("disk"), 1), &[]),
                refused(
                    Errno::INVAL,
                    "disk disk is a secret file; a disk must be a memfd",
                ),
            ),
            row(
                "DEVICE with a guest_memfd disk",
                a_with_guest_memfd,
                |w| w.ask("a", &device(Some("gmem"), 1), &[]),
                refused(Errno::INVAL, "disk gmem is a guest_memfd file"),
            ),
            row(
                "DEVICE with 0 queues",
                a,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Device),
                        &poke(&device(None, 1), 0, 0),
                        &[],
                    )
                },
                refused(Errno::INVAL, "DEVICE queues: unknown value 0"),
            ),
            row(
                "DEVICE with 9 queues",
                a,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Device),
                        &poke(&device(None, 1), 0, 9),
                        &[],
                    )
                },
                refused(Errno::INVAL, "DEVICE queues: unknown value 9"),
            ),
            row(
                "DEVICE flags not zero",
                a,
                |w| {
                    w.ask_raw(
                        "a",
                        code(Request::Device),
                        &poke(&device(None, 1), 4, 1),
                        &[],
                    )
                },
                refused(Errno::INVAL, "DEVICE flags"),
            ),
            row(
                "a 9th DEVICE of one VM",
                |w| {
                    w.lease("a", "vm-a");
                    for disk in ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"] {
                        w.must("a", &create(disk, MIB), &[]);
                    }
                    for disk in ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"] {
                        w.must("a", &device(Some(disk), 1), &[]);
                    }
                    Ok(())
                },
                |w| w.ask("a", &device(Some("d8"), 1), &[]),
                refused(Errno::NOSPC, "VM vm-a has 8 devices"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §6.5, §7.2, §7.3, §7.6: limits and quotas.

#[test]
fn limits_and_quotas() {
    run_table(
        "limits and quotas",
        vec![
            row(
                "CREATE beyond --max-memory",
                a,
                |w| w.ask("a", &create("ram", 2 * MIB), &[]),
                refused(Errno::NOSPC, "2 MiB requested > 1 MiB"),
            )
            .args(&["--max-memory", "1M"]),
            row(
                "DEPOSIT beyond --max-memory",
                a,
                |w| {
                    let fd = memfd(2 * MIB);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::NOSPC, "2 MiB requested > 1 MiB"),
            )
            .args(&["--max-memory", "1M"]),
            row(
                "CREATE of hugetlb pages beyond --max-memory (ENOSPC before ENOMEM)",
                a,
                |w| {
                    let body =
                        create_kind("ram", 2 * MIB, MemoryKind::Hugetlb2M, CreateFlags::empty());
                    w.ask("a", &body, &[])
                },
                refused(Errno::NOSPC, "2 MiB requested > 1 MiB"),
            )
            .args(&["--max-memory", "1M"]),
            row(
                "CREATE beyond --max-files",
                |w| {
                    w.operator("op");
                    w.must("op", &create("one", MIB), &[]);
                    w.lease("a", "vm-a");
                    Ok(())
                },
                |w| w.ask("a", &create("two", MIB), &[]),
                refused(
                    Errno::NFILE,
                    "keeps 1 memory files, its limit (--max-files)",
                ),
            )
            .args(&["--max-files", "1"]),
            row(
                "DEPOSIT beyond --max-files",
                |w| {
                    w.operator("op");
                    w.must("op", &create("one", MIB), &[]);
                    w.lease("a", "vm-a");
                    Ok(())
                },
                |w| {
                    let fd = memfd(MIB);
                    deposit_as_is(w, "a", &deposit("two", MemoryKind::Memfd), &fd)
                },
                refused(
                    Errno::NFILE,
                    "keeps 1 memory files, its limit (--max-files)",
                ),
            )
            .args(&["--max-files", "1"]),
            row(
                "CREATE beyond --max-files-per-vm",
                a_with_ram,
                |w| w.ask("a", &create("two", MIB), &[]),
                refused(Errno::MFILE, "already has 1 files"),
            )
            .args(&["--max-files-per-vm", "1"]),
            row(
                "DEPOSIT beyond --max-files-per-vm",
                a_with_ram,
                |w| {
                    let fd = memfd(MIB);
                    deposit_as_is(w, "a", &deposit("two", MemoryKind::Memfd), &fd)
                },
                refused(Errno::MFILE, "already has 1 files"),
            )
            .args(&["--max-files-per-vm", "1"]),
            row(
                "CREATE beyond --quota-files (a second VM of the same principal)",
                |w| {
                    a_with_ram(w)?;
                    w.lease("b", "vm-b");
                    Ok(())
                },
                |w| w.ask("b", &create("two", MIB), &[]),
                refused(Errno::DQUOT, "file quota reached"),
            )
            .args(&["--quota-files", "1"]),
            row(
                "DEPOSIT beyond --quota-files",
                a_with_ram,
                |w| {
                    let fd = memfd(MIB);
                    deposit_as_is(w, "a", &deposit("two", MemoryKind::Memfd), &fd)
                },
                refused(Errno::DQUOT, "file quota reached"),
            )
            .args(&["--quota-files", "1"]),
            row(
                "CREATE beyond --quota-memory",
                a,
                |w| w.ask("a", &create("ram", 2 * MIB), &[]),
                refused(Errno::DQUOT, "memory quota reached"),
            )
            .args(&["--quota-memory", "1M"]),
            row(
                "DEPOSIT beyond --quota-memory",
                a,
                |w| {
                    let fd = memfd(2 * MIB);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::DQUOT, "memory quota reached"),
            )
            .args(&["--quota-memory", "1M"]),
            row(
                "CREATE when the table of processes holding memory fds is full",
                holders_table_full,
                |w| w.ask("a", &create("ram", MIB), &[]),
                refused(Errno::NFILE, "tracks 3 processes holding memory files"),
            )
            .args(&["--max-connections", "3"]),
            row(
                "OPEN when the table of processes holding memory fds is full",
                |w| {
                    holders_table_full(w)?;
                    // Made by an operator: this process is handed no fd.
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    w.must(
                        "op",
                        &transfer(in_operators("ram"), in_vm("vm-a", "ram")),
                        &[],
                    );
                    Ok(())
                },
                |w| w.ask("a", &open(own("ram")), &[]),
                refused(Errno::NFILE, "tracks 3 processes holding memory files"),
            )
            .args(&["--max-connections", "3"]),
            row(
                "DEPOSIT when the table of processes holding memory fds is full",
                holders_table_full,
                |w| {
                    let fd = memfd(MIB);
                    deposit_as_is(w, "a", &deposit("ram", MemoryKind::Memfd), &fd)
                },
                refused(Errno::NFILE, "tracks 3 processes holding memory files"),
            )
            .args(&["--max-connections", "3"]),
            row(
                "CREATE when gmemd cannot make the reply fd",
                op,
                // One fd left: the new memfd's, none for the reply.
                |w| with_fds_left(w, 1, |w| w.ask("op", &create("ram", MIB), &[])),
                refused(Errno::MFILE, "cannot duplicate the fd of ram"),
            ),
            row(
                "OPEN when gmemd cannot make the reply fd",
                |w| {
                    w.operator("op");
                    w.must("op", &create("ram", MIB), &[]);
                    Ok(())
                },
                |w| with_fds_left(w, 0, |w| w.ask("op", &open(own("ram")), &[])),
                refused(Errno::MFILE, "cannot duplicate the fd of ram"),
            ),
            row(
                "CREATE of more 2 MiB hugepages than are free",
                |w| {
                    // Holds the hugepage lock: no other test frees pages meanwhile.
                    let Some(lock) = hugepages::Reservation::take(0) else {
                        return Err(Skip("cannot reserve 2 MiB hugepages".to_owned()));
                    };
                    w.keep.push(Box::new(lock));
                    a(w)
                },
                |w| {
                    let size = (hugepages::free() + 1) * HUGE_PAGE;
                    let body =
                        create_kind("ram", size, MemoryKind::Hugetlb2M, CreateFlags::empty());
                    w.ask("a", &body, &[])
                },
                refused(
                    Errno::NOMEM,
                    "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                ),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §3: connections beyond a limit are closed without a message.

#[test]
fn connection_limits() {
    run_table(
        "connection limits",
        vec![
            row(
                "a connection beyond --max-connections",
                // The snapshot's operator session and this lease take both slots.
                a,
                |w| {
                    w.fresh("x", None);
                    w.ask("x", &hello(Some("vm-b"), Features::all()), &[])
                },
                Expect::Closed,
            )
            .args(&["--max-connections", "2"]),
            row(
                "a non-operator's connection into the operators' reserved slots",
                client_control,
                |w| {
                    w.fresh("x", Some(CLIENT));
                    w.ask("x", &hello(Some("vm-n"), Features::all()), &[])
                },
                Expect::Closed,
            )
            .args(&[
                "--max-connections",
                "3",
                "--reserved-operator-connections",
                "1",
            ]),
            row(
                "a connection beyond --quota-connections",
                client_control,
                |w| {
                    w.fresh("x", Some(CLIENT));
                    w.ask("x", &hello(Some("vm-n"), Features::all()), &[])
                },
                Expect::Closed,
            )
            .args(&["--quota-connections", "1"]),
            row(
                "HELLO after the HELLO deadline",
                fresh,
                |w| {
                    std::thread::sleep(Duration::from_millis(1600));
                    w.ask("x", &hello(Some("vm-a"), Features::all()), &[])
                },
                Expect::Closed,
            )
            .args(&["--hello-timeout", "1s"]),
        ],
    );
}

// ---------------------------------------------------------------------------
// Not refusals, but rules the rows above lean on.

/// §6.4, §14.1: lease ids count up and are never handed out again, across
/// ended, refused, revoked leases and a restart in place.
#[test]
fn lease_ids_are_never_reused() {
    let daemon = Daemon::start();
    let mut ctl = daemon.control();
    let lease_of = |client: &Client| client.lease().expect("a lease").get();
    let mut ids = Vec::new();

    let first = daemon.lease(vm("vm-a"));
    ids.push(lease_of(&first));
    // Refused while vm-a is leased: no id is used up visibly.
    let err = Client::connect(daemon.socket(), vm("vm-a")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::BUSY.raw_os_error()), "{err}");
    drop(first);
    daemon.wait_no_leases();
    let again = daemon.lease(vm("vm-a"));
    ids.push(lease_of(&again));
    let other = daemon.lease(vm("vm-b"));
    ids.push(lease_of(&other));
    ctl.revoke(&VmSelector::Name(name("vm-b"))).unwrap();
    let after_revoke = daemon.lease(vm("vm-b"));
    ids.push(lease_of(&after_revoke));
    // A restart in place keeps the counter.
    ctl.restart().unwrap();
    wait_until(Duration::from_secs(20), "gmemd to serve again", || {
        let status = Client::connect_control(daemon.socket())
            .ok()?
            .daemon_status()
            .ok()??;
        (status.restarts == 1).then_some(())
    });
    let after_restart = daemon.lease(vm("vm-c"));
    ids.push(lease_of(&after_restart));

    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "lease ids {ids:?} must count up and never repeat"
    );
    // The kept leases show in STATUS under their ids.
    let mut shown: Vec<u64> = daemon
        .control()
        .leases()
        .unwrap()
        .iter()
        .map(|l| l.lease.get())
        .collect();
    shown.sort_unstable();
    assert_eq!(shown, [ids[1], ids[3], ids[4]]);
}

/// §6.2: after a failed HELLO the same connection may say HELLO again, and
/// it succeeds once the reason has gone.
#[test]
fn a_failed_hello_can_be_retried_on_the_same_connection() {
    let daemon = Daemon::start();
    let holder = daemon.lease(vm("vm-a"));
    let mut conn = Conn::connect(&daemon.socket(), None);
    let vm_a = hello(Some("vm-a"), Features::all());
    match conn.call(&vm_a, &[]) {
        Answer::Refused { errno, .. } => assert_eq!(errno, Errno::BUSY.raw_os_error()),
        other => panic!("HELLO for a leased VM: {other:?}"),
    }
    drop(holder);
    daemon.wait_no_leases();
    match conn.call(&vm_a, &[]) {
        Answer::Done(_) => {}
        other => panic!("HELLO once the VM is free: {other:?}"),
    }
    let leases = daemon.control().leases().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
}
