//! No client can starve the others: connection slots per principal and
//! for operators, a HELLO deadline, a listener that rests instead of
//! spinning when gmemd runs out of fds, backpressure on a client that
//! never reads, with a bounded log throughout.
//! (CPU and log figures are checked generously: the point is "not a
//! spinning core, not megabytes of log", not a speed target.)

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use gmem_protocol::conn::FrameReader;
use gmem_protocol::wire::{
    BindRequest, GuestAddress, Header, LeaseId, MemoryKind, Reply, Request, RequestBody,
};
use gmem_tests::tenant::{run_tenant, spawn_tenant, NOBODY, OTHER};
use gmem_tests::{name, vm, wait_until, Daemon};

/// gmemd's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_millis(ticks * 1000 / hz)
}

/// `gmemctl status` as an operator: whether it answered, and how fast.
fn operator_status(daemon: &Daemon) -> (bool, Duration) {
    let start = Instant::now();
    let out = daemon
        .gmemctl()
        .args(["--timeout", "5", "status"])
        .output()
        .unwrap();
    (out.status.success(), start.elapsed())
}

#[test]
fn idle_connections_of_one_uid_lock_out_neither_operators_nor_other_clients() {
    let daemon = Daemon::start_with(&["--allow-uid", &OTHER.to_string(), "--hello-timeout", "2s"]);
    // 5,000 connections from a uid that is not even allowed, never a word.
    let mut flood = spawn_tenant(&daemon, Some(NOBODY), &["--no-hello", "flood:5000", "hold"]);
    let out = flood.wait_for_output("HOLDING", Duration::from_secs(120));
    assert!(out.contains("flood:5000 => OK 5000"), "{out}");
    let (answered, took) = operator_status(&daemon);
    assert!(answered, "an operator's status went unanswered");
    eprintln!("operator status under 5,000 idle connections: {took:?}");
    // An allowed client of another uid is served too.
    let other = run_tenant(&daemon, Some(OTHER), &["status"]);
    assert!(
        other.result("status").starts_with("OK"),
        "{:#?}",
        other.lines
    );
    // gmemd kept one principal's quota of them, not 5,000 fds.
    assert!(
        daemon.fd_count() < 200,
        "gmemd has {} fds",
        daemon.fd_count()
    );
    // Those it kept are closed once the HELLO deadline passes.
    wait_until(
        Duration::from_secs(10),
        "idle connections to be closed",
        || daemon.log().contains("no HELLO within 2s").then_some(()),
    );
    // The log says it, but not 5,000 times.
    let log = daemon.log();
    let turned_away = log.matches("turned away a connection").count();
    assert!((1..=10).contains(&turned_away), "{turned_away} lines");
}

#[test]
fn filling_gmemd_fd_limit_does_not_make_it_spin() {
    let daemon = Daemon::start();
    let pid = daemon.pid();
    // gmemd may have only 48 fds from now on.
    let limit = rustix::process::Rlimit {
        current: Some(48),
        maximum: Some(48),
    };
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()),
        rustix::process::Resource::Nofile,
        limit,
    )
    .unwrap();
    let log_before = daemon.log().len();
    // Root is an operator: no per-principal slot quota holds it back, the
    // fd limit does.
    let mut flood = spawn_tenant(&daemon, None, &["--no-hello", "flood:500", "hold"]);
    flood.wait_for_output("HOLDING", Duration::from_secs(60));
    wait_until(Duration::from_secs(10), "gmemd to run out of fds", || {
        daemon.log().contains("accept failed").then_some(())
    });
    // Connections wait that gmemd cannot accept. A listener left in epoll
    // would wake the loop at once, forever: a spinning core. Not spinning
    // is CPU time not spent, which only a window of time can show; the
    // check fails as soon as gmemd has burnt a quarter of the window.
    let window = Duration::from_secs(3);
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    while start.elapsed() < window {
        let cpu = cpu_time(pid) - cpu_before;
        assert!(
            cpu < window / 4,
            "gmemd spins: {cpu:?} of CPU in {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = cpu_time(pid) - cpu_before;
    let logged = daemon.log().len() - log_before;
    eprintln!(
        "fd flood: gmemd used {cpu:?} of CPU in {window:?} out of fds, logged {logged} bytes"
    );
    assert!(logged < 64 << 10, "gmemd logged {logged} bytes");
    let failures = daemon.log().matches("accept failed").count();
    assert!(failures <= 10, "{failures} accept failures logged");
    // The flood gone, gmemd serves again.
    flood.kill9();
    wait_until(Duration::from_secs(20), "gmemd to serve again", || {
        operator_status(&daemon).0.then_some(())
    });
}

/// Bytes of a BIND's success reply: header, then a reply head 0/0.
const BIND_REPLY: u64 = 12 + 8;
const PAGE: u64 = 4096;
/// Bindings per file (`MAX_BINDINGS_PER_FILE`).
const PER_FILE: usize = 64;
/// BINDs each flooder pipelines without reading a reply: more than the
/// replies its socket holds (about 280 with the default 208 KiB socket
/// buffer) and few enough that the requests themselves fit in the socket.
const FLOOD: usize = 1024;

/// The BIND of `slot`: a page no other slot binds (of file `f{slot / 64}`)
/// at a guest address of its own, which gmemd never refuses.
fn bind_frame(slot: usize) -> Vec<u8> {
    let body = RequestBody::Bind(BindRequest::new(
        u32::try_from(slot).unwrap(),
        GuestAddress(slot as u64 * PAGE),
        name(&format!("f{}", slot / PER_FILE)),
        (slot % PER_FILE) as u64 * PAGE,
        PAGE,
    ))
    .encode();
    let mut frame = Header::request(Request::Bind, body.len())
        .to_bytes()
        .to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Replies waiting in a client's socket (all BIND successes here).
fn replies_in(stream: &UnixStream) -> usize {
    usize::try_from(rustix::io::ioctl_fionread(stream).unwrap() / BIND_REPLY).unwrap()
}

struct Flooder {
    vm: String,
    lease: LeaseId,
    stream: UnixStream,
    /// Requests it sent.
    sent: usize,
    _client: gmem_protocol::Client,
}

/// Backpressure (PROTOCOL.md §6.2): gmemd reads a client's next request
/// only once every reply queued for it is written, so a client that
/// pipelines requests and never reads has at most one reply waiting in
/// gmemd; gmemd stops reading it once its socket is full, and serves the
/// others meanwhile.
///
/// What gmemd served is what it applied: each BIND adds a binding, which
/// STATUS counts per lease. What reached the client is what sits in its
/// socket (`FIONREAD`). Served minus delivered is what gmemd holds queued.
#[test]
fn a_client_that_never_reads_is_not_read_either() {
    let daemon = Daemon::start();
    let mut ctl = daemon.control();
    let mut flooders = Vec::new();
    for c in 0..4 {
        let vm_name = format!("flood-{c}");
        let mut client = daemon.lease(vm(&vm_name));
        // Replies left unread before the flood: gmemd serves a client up
        // to 64 requests per wakeup, and each flooder's socket fills at
        // another point of those 64 (so that a daemon which goes on
        // reading to the end of its wakeup queues more than one reply for
        // at least one of them).
        let lead = 16 * c;
        let sent = lead + FLOOD;
        for f in 0..sent.div_ceil(PER_FILE) {
            client
                .create(
                    &name(&format!("f{f}")),
                    PER_FILE as u64 * PAGE,
                    MemoryKind::Memfd,
                )
                .unwrap();
        }
        let stream = client.stream().try_clone().unwrap();
        let lead_frames: Vec<u8> = (0..lead).flat_map(bind_frame).collect();
        (&stream).write_all(&lead_frames).unwrap();
        wait_until(Duration::from_secs(10), "the lead replies", || {
            (replies_in(&stream) == lead).then_some(())
        });
        // The flood, in one write; never blocking (were it not to fit,
        // gmemd would leave the rest unread, which is the point).
        let flood: Vec<u8> = (lead..sent).flat_map(bind_frame).collect();
        stream.set_nonblocking(true).unwrap();
        let written = (&stream).write(&flood).unwrap();
        assert_eq!(written, flood.len(), "the flood does not fit: lower FLOOD");
        eprintln!("{vm_name}: {lead} replies left unread, then {FLOOD} BINDs");
        flooders.push(Flooder {
            lease: client.lease().unwrap(),
            vm: vm_name,
            stream,
            sent,
            _client: client,
        });
    }

    // Until gmemd has stopped reading every flooder: at no time does it
    // hold more than one reply for one of them.
    let mut last = vec![usize::MAX; flooders.len()];
    let mut unchanged = 0;
    wait_until(
        Duration::from_secs(20),
        "gmemd to stop reading the flooders",
        || {
            // Served first, delivered after: a reply delivered in between
            // can only make the difference smaller.
            let leases = ctl.leases().unwrap();
            let mut moved = false;
            for (f, seen) in flooders.iter().zip(last.iter_mut()) {
                let served = leases
                    .iter()
                    .find(|l| l.lease == f.lease)
                    .map_or(0, |l| l.bindings as usize);
                let delivered = replies_in(&f.stream);
                assert!(
                    served <= delivered + 1,
                    "{}: gmemd served {served} requests but only {delivered} replies reached \
                     the client: it read on while {} replies were queued",
                    f.vm,
                    served - delivered
                );
                moved |= served != *seen;
                *seen = served;
            }
            unchanged = if moved { 0 } else { unchanged + 1 };
            (unchanged >= 5).then_some(())
        },
    );
    for (f, served) in flooders.iter().zip(&last) {
        assert!(
            *served < f.sent,
            "{}: all {} requests served: the socket never filled",
            f.vm,
            f.sent
        );
        eprintln!("{}: {served} of {} requests served", f.vm, f.sent);
    }
    // Everyone else is served meanwhile.
    let mut other = daemon.lease(vm("bystander"));
    other
        .create(&name("ram"), PAGE, MemoryKind::Memfd)
        .expect("a bystander is served while the flooders wait");

    // Once read, every request is answered, in order, and applied.
    for f in &flooders {
        f.stream.set_nonblocking(false).unwrap();
        f.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = FrameReader::new();
        for n in 0..f.sent {
            let frame = reader
                .read_frame(std::os::fd::AsFd::as_fd(&f.stream))
                .unwrap_or_else(|e| panic!("{}: reply {n}: {e}", f.vm))
                .expect("a blocking read");
            assert_eq!(frame.header.code, Request::Bind.code());
            let reply = Reply::decode(&frame.payload).unwrap();
            assert_eq!(reply.status, 0, "{}: reply {n}: {reply:?}", f.vm);
        }
    }
    let leases = ctl.leases().unwrap();
    for f in &flooders {
        let lease = leases.iter().find(|l| l.lease == f.lease).unwrap();
        assert_eq!(lease.bindings as usize, f.sent, "{}", f.vm);
    }
}
