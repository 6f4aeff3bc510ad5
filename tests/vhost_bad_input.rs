//! A hostile vhost-user frontend on gmemd's device socket: broken framing,
//! memory regions that are not the VM's, rings outside any memory, another
//! uid, a flood of connections, frontends that stall. gmemd refuses each
//! (a failed REPLY_ACK or a closed connection), never crashes, records no
//! binding from a refused table, and a real guest doing disk I/O on the
//! same device does not notice.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind};
use gmem_protocol::Client;
use gmem_tests::qemu::{gmemctl, gmemctl_json, LaunchSpec, Vm, BOOT_TIMEOUT};
use gmem_tests::tenant::NOBODY;
use gmem_tests::vhost::{
    all_bindings, borrow_all, eventfd, foreign_memfd, io_rounds, message, message_claiming,
    table_payload, table_payload_claiming, vring_addr_payload, vring_state_payload, wait_io,
    Answer, MemRegion, VhostFrontend, MAX_PAYLOAD, NEED_REPLY, REPLY, VERSION_1, VRING_NOFD,
};
use gmem_tests::{e2e, name, vm, vm_file, wait_until, Daemon};
use gmemd::vhost::server::MAX_CONNECTIONS;
use rustix::event::{PollFd, PollFlags, Timespec};
use vhost::vhost_user::message::FrontendReq;

const MIB: u64 = 1 << 20;
/// How long a refused connection may take to be closed.
const HANG_UP: Duration = Duration::from_secs(5);
/// Guest addresses only the hostile frontend uses: no binding may ever
/// show up at one of them.
const HOSTILE_GPAS: [u64; 4] = [
    0x100_0000_0000,
    0x200_0000_0000,
    0x300_0000_0000,
    0x400_0000_0000,
];
/// The first slot of a binding recorded from a memory table
/// (`service/devices.rs`, RECORDED_SLOT_BASE; not exported).
const RECORDED_SLOT_BASE: u64 = 0x8000;

/// gmemd's pid, checking it still runs.
fn alive(daemon: &mut Daemon, pid: u32) {
    assert!(daemon.is_running(), "gmemd died:\n{}", daemon.log());
    assert_eq!(daemon.pid(), pid);
    let out = gmemctl(daemon, &["status"]);
    assert!(
        out.status.success(),
        "gmemctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// gmemd's log from byte `from` on (a length [`Daemon::log`] had earlier).
fn log_since(daemon: &Daemon, from: usize) -> String {
    let log = daemon.log();
    log.get(from..)
        .unwrap_or_else(|| panic!("gmemd's log shrank below {from} bytes:\n{log}"))
        .to_owned()
}

/// Whether `fd` (an eventfd) has a count to read.
fn readable(fd: &OwnedFd) -> bool {
    let mut poll = [PollFd::new(fd, PollFlags::IN)];
    rustix::event::poll(&mut poll, Some(&Timespec::default())).unwrap() > 0
}

/// Whether a thread of process `pid` sleeps in `write`, `writev`, `sendto`
/// or `sendmsg` (`/proc/PID/task/TID/syscall` names the call a sleeping
/// thread is in; root may read it).
fn sleeping_in_a_send(pid: u32) -> bool {
    let sends = [
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
    ];
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("gmemd's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("syscall")).ok())
        .filter_map(|call| call.split_whitespace().next()?.parse::<i64>().ok())
        .any(|nr| sends.contains(&nr))
}

/// A frontend on `socket` that did the handshake (REPLY_ACK negotiated).
fn frontend(socket: &Path) -> VhostFrontend {
    let frontend = VhostFrontend::connect(socket).expect("connect to the device");
    frontend.handshake();
    frontend
}

/// Whether the device still answers on `frontend`.
fn still_served(frontend: &VhostFrontend) -> bool {
    if frontend
        .send(FrontendReq::GET_FEATURES, VERSION_1, &[], &[])
        .is_err()
    {
        return false;
    }
    matches!(frontend.answer(HANG_UP), Answer::Reply(r) if r.request == FrontendReq::GET_FEATURES as u32)
}

/// Sends `bytes` with `fds` on a fresh, handshaken connection and expects
/// the device to hang up without answering.
fn hung_up_on(socket: &Path, what: &str, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let f = frontend(socket);
    // A send may already fail if the device read enough to hang up.
    let _ = f.send_raw(bytes, fds);
    assert!(
        f.closed_within(HANG_UP),
        "{what}: the connection stayed open"
    );
}

/// `status --json` of `daemon`.
fn status(daemon: &Daemon) -> serde_json::Value {
    gmemctl_json(daemon, &["status"])
}

fn no_hostile_gpa(daemon: &Daemon) {
    let bindings = all_bindings(&status(daemon));
    for b in &bindings {
        assert!(
            !HOSTILE_GPAS.contains(&b.2),
            "a binding was recorded from a hostile table: {b:?} in {bindings:?}"
        );
    }
}

#[test]
fn a_hostile_second_frontend_does_not_disturb_a_guest_doing_disk_io() {
    if e2e::qemu().is_none() {
        return;
    }
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LaunchSpec::new("256M", "gmem.disk=io:1000000");
    spec.gmemctl_args = vec!["--disk".into(), "scratch=16M".into()];
    let guest = Vm::launch(&daemon, dir.path(), "io-vm", &spec);
    wait_io(&guest, 2, BOOT_TIMEOUT, "the guest's first disk I/O");
    let ram_file = "io-vm.ram";
    let ram_size = 256 * MIB;
    let before = wait_until(Duration::from_secs(30), "QEMU's table", || {
        let b = all_bindings(&status(&daemon));
        (b.iter().any(|b| b.0 == ram_file) && b.iter().all(|b| b.5)).then_some(b)
    });
    let socket = daemon.dir().join("vhost/d0.sock");

    // The memory a hostile frontend has at hand: the VM's own RAM (an
    // operator may open it), a memfd gmemd never saw, another VM's file.
    let (ram, _) = daemon
        .control()
        .open_in(&vm_file("io-vm", ram_file))
        .expect("an operator opens the VM's RAM");
    let plain = foreign_memfd(MIB);
    let mut other_lease = daemon.lease(vm("other-vm"));
    let (other, _) = other_lease
        .create(&name("other.ram"), MIB, MemoryKind::Memfd)
        .unwrap();
    let [h0, h1, h2, h3] = HOSTILE_GPAS;

    // Refused regions: a failed REPLY_ACK, and the connection serves on.
    let f = frontend(&socket);
    let refused: [(&str, Vec<MemRegion>, Vec<BorrowedFd<'_>>); 5] = [
        (
            "the VM's RAM past its end",
            vec![MemRegion::new(h0, 2 * MIB, ram_size - MIB)],
            vec![ram.as_fd()],
        ),
        (
            "a memfd that is not gmemd's",
            vec![MemRegion::new(h1, MIB, 0)],
            vec![plain.as_fd()],
        ),
        (
            "another VM's file",
            vec![MemRegion::new(h2, MIB, 0)],
            vec![other.as_fd()],
        ),
        (
            "the VM's real RAM next to another VM's file",
            vec![MemRegion::new(0, 2 * MIB, 0), MemRegion::new(h3, MIB, 0)],
            vec![ram.as_fd(), other.as_fd()],
        ),
        (
            "a region of size 0",
            vec![MemRegion::new(h3, 0, 0)],
            vec![ram.as_fd()],
        ),
    ];
    for (what, regions, fds) in &refused {
        // Each refusal is logged: read in what was written since this one
        // was sent, not in the whole log (where the first would do for all).
        let from = daemon.log().len();
        let ack = f.set_mem_table(regions, fds);
        assert!(matches!(ack, Some(n) if n != 0), "{what}: {ack:?}");
        assert!(still_served(&f), "{what}: the connection ended");
        wait_until(
            Duration::from_secs(10),
            "the refusal in gmemd's log",
            || {
                log_since(&daemon, from)
                    .contains("vhost-user filter: refused SET_MEM_TABLE")
                    .then_some(())
            },
        );
        alive(&mut daemon, pid);
    }
    drop(f);

    // Framing errors: the connection is closed, without an answer.
    let eight_fds: Vec<_> = (0..8).map(|_| foreign_memfd(MIB)).collect();
    let nine: Vec<_> = (0..9u64)
        .map(|i| MemRegion::new(h0 + i * MIB, MIB, 0))
        .collect();
    hung_up_on(
        &socket,
        "9 regions",
        &message(
            FrontendReq::SET_MEM_TABLE as u32,
            VERSION_1 | NEED_REPLY,
            &table_payload(&nine),
        ),
        &borrow_all(&eight_fds),
    );
    let nine_fds: Vec<_> = (0..9).map(|_| foreign_memfd(MIB)).collect();
    hung_up_on(
        &socket,
        "9 fds",
        &message(
            FrontendReq::SET_MEM_TABLE as u32,
            VERSION_1 | NEED_REPLY,
            &table_payload(&nine[..1]),
        ),
        &borrow_all(&nine_fds),
    );
    hung_up_on(
        &socket,
        "2 regions, 1 fd",
        &message(
            FrontendReq::SET_MEM_TABLE as u32,
            VERSION_1 | NEED_REPLY,
            &table_payload(&nine[..2]),
        ),
        &[ram.as_fd()],
    );
    hung_up_on(
        &socket,
        "nregions 2, one region's bytes",
        &message(
            FrontendReq::SET_MEM_TABLE as u32,
            VERSION_1 | NEED_REPLY,
            &table_payload_claiming(2, &nine[..1]),
        ),
        &[ram.as_fd(), ram.as_fd()],
    );
    hung_up_on(
        &socket,
        "a payload over 4096 bytes",
        &message_claiming(
            FrontendReq::SET_MEM_TABLE as u32,
            VERSION_1 | NEED_REPLY,
            u32::try_from(MAX_PAYLOAD + 1).unwrap(),
            &vec![0; MAX_PAYLOAD + 1],
        ),
        &[],
    );
    hung_up_on(
        &socket,
        "garbage",
        &(0..64u8)
            .map(|i| i.wrapping_mul(37) ^ 0xa4)
            .collect::<Vec<_>>(),
        &[],
    );
    hung_up_on(
        &socket,
        "the REPLY flag",
        &message(FrontendReq::GET_FEATURES as u32, VERSION_1 | REPLY, &[]),
        &[],
    );
    hung_up_on(
        &socket,
        "an fd on GET_FEATURES",
        &message(FrontendReq::GET_FEATURES as u32, VERSION_1, &[]),
        &[plain.as_fd()],
    );
    alive(&mut daemon, pid);

    // Ring addresses outside the mapped memory: SET_VRING_ADDR fails and
    // the backend ends the connection. The table is the VM's real RAM at
    // its real place (it only confirms what QEMU mapped).
    let user = 0x7f00_0000_0000u64;
    let real = MemRegion {
        guest_phys_addr: 0,
        memory_size: ram_size,
        user_addr: user,
        mmap_offset: 0,
    };
    let f = frontend(&socket);
    assert_eq!(f.set_mem_table(&[real], &[ram.as_fd()]), Some(0));
    let outside = user + ram_size + 0x10_0000;
    f.send(
        FrontendReq::SET_VRING_NUM,
        VERSION_1,
        &vring_state_payload(0, 256),
        &[],
    )
    .unwrap();
    f.send(
        FrontendReq::SET_VRING_ADDR,
        VERSION_1 | NEED_REPLY,
        &vring_addr_payload(0, outside, outside, outside),
        &[],
    )
    .unwrap();
    match f.answer(HANG_UP) {
        Answer::Reply(r) => {
            assert_eq!(r.request, FrontendReq::SET_VRING_ADDR as u32);
            assert_ne!(r.u64(), 0, "SET_VRING_ADDR outside memory was acked");
            assert!(f.closed_within(HANG_UP));
        }
        Answer::Closed => {}
        Answer::Silent => panic!("SET_VRING_ADDR outside memory: no answer"),
    }
    // Rings that start in the last bytes of RAM and run past its end: the
    // addresses translate, so the backend takes them, and a kick makes it
    // use them. It must find the ring unusable (and write nothing into the
    // real guest's RAM: the used ring is the last 4 bytes, the avail index
    // lies past the end, so no chain is ever popped).
    let f = frontend(&socket);
    assert_eq!(f.set_mem_table(&[real], &[ram.as_fd()]), Some(0));
    let last = user + ram_size;
    let (kick, call) = (eventfd(), eventfd());
    let steps: [(FrontendReq, Vec<u8>, Vec<BorrowedFd<'_>>); 5] = [
        (
            FrontendReq::SET_VRING_NUM,
            vring_state_payload(0, 1024),
            vec![],
        ),
        (
            FrontendReq::SET_VRING_ADDR,
            vring_addr_payload(0, last - 16, last - 4, last - 2),
            vec![],
        ),
        (
            FrontendReq::SET_VRING_BASE,
            vring_state_payload(0, 0),
            vec![],
        ),
        (
            FrontendReq::SET_VRING_CALL,
            0u64.to_le_bytes().to_vec(),
            vec![call.as_fd()],
        ),
        (
            FrontendReq::SET_VRING_KICK,
            0u64.to_le_bytes().to_vec(),
            vec![kick.as_fd()],
        ),
    ];
    for (request, payload, fds) in &steps {
        assert_eq!(f.acked(*request, payload, fds), 0, "{request:?}");
    }
    assert_eq!(
        f.acked(
            FrontendReq::SET_VRING_ENABLE,
            &vring_state_payload(0, 1),
            &[]
        ),
        0
    );
    // Each kick is waited for until the backend has taken it (read the
    // eventfd down to 0), not for a fixed time: its worker takes the next
    // kick only once it has handled the one before, so all but the last
    // are handled when the loop ends.
    for i in 0..10 {
        rustix::io::write(&kick, &1u64.to_le_bytes()).unwrap();
        wait_until(
            Duration::from_secs(10),
            &format!("the backend to take kick {i}"),
            || (!readable(&kick)).then_some(()),
        );
    }
    assert!(still_served(&f), "the backend ended after the kicks");
    // No chain was popped, so nothing was used and the guest not notified.
    assert!(!readable(&call), "the backend signalled a used buffer");
    // The NOFD form with an fd anyway breaks framing.
    let _ = f.send(
        FrontendReq::SET_VRING_CALL,
        VERSION_1,
        &VRING_NOFD.to_le_bytes(),
        &[call.as_fd()],
    );
    assert!(f.closed_within(HANG_UP));
    alive(&mut daemon, pid);

    // The real guest never noticed: its rounds go on verifying, and the
    // bindings are what they were (confirmed by QEMU's table, none at a
    // hostile address).
    let after_attack = io_rounds(&guest);
    wait_io(
        &guest,
        2,
        Duration::from_secs(60),
        "disk I/O after the attack",
    );
    assert!(io_rounds(&guest) > after_attack);
    no_hostile_gpa(&daemon);
    let after = wait_until(Duration::from_secs(10), "the same bindings", || {
        let b = all_bindings(&status(&daemon));
        (b == before).then_some(b)
    });
    assert!(after.iter().any(|b| b.0 == ram_file), "{after:?}");
    let log = daemon.log();
    assert!(log.contains("refused SET_MEM_TABLE"), "{log}");
    alive(&mut daemon, pid);
}

/// A VM with a lease kept open, a RAM file and a disk, and its device.
struct DeviceVm {
    lease: Client,
    ram: OwnedFd,
    socket: PathBuf,
}

impl DeviceVm {
    fn new(daemon: &Daemon, vm_name: &str) -> Self {
        let mut lease = daemon.lease(vm(vm_name));
        let (ram, _) = lease
            .create(&name("ram"), 8 * MIB, MemoryKind::Memfd)
            .unwrap();
        lease.create(&name("disk"), MIB, MemoryKind::Memfd).unwrap();
        let device = lease.device(Some(&name("disk")), 1).unwrap();
        let socket = PathBuf::from(device.path);
        // gmemd binds the socket only after it sent the reply (QEMU
        // connects with reconnect-ms, so it retries too).
        wait_until(Duration::from_secs(10), "the device socket", || {
            VhostFrontend::connect(&socket).ok()
        });
        DeviceVm { lease, ram, socket }
    }
}

/// The bindings of file `ram` in the status, as (slot, gpa, offset, size,
/// confirmed).
fn ram_bindings(daemon: &Daemon) -> Vec<(u64, u64, u64, u64, bool)> {
    all_bindings(&status(daemon))
        .into_iter()
        .filter(|b| b.0 == "ram")
        .map(|b| (b.1, b.2, b.3, b.4, b.5))
        .collect()
}

/// The device socket [`probe_helper_run_as_another_uid`] probes.
const PROBE_SOCKET: &str = "GMEM_VHOST_PROBE_SOCKET";

/// Not a test of its own (so ignored: it is listed as skipped, never as
/// passed): the probe [`probe_as`] runs in a process of another uid. It
/// connects to the device socket in [`PROBE_SOCKET`], sends GET_FEATURES
/// and prints `CLOSED` if the device hangs up without an answer, `SERVED`
/// if it answers.
#[test]
#[ignore = "a helper that another_uid_is_closed_at_once_even_when_gmemd_admits_it runs"]
fn probe_helper_run_as_another_uid() {
    let socket = std::env::var_os(PROBE_SOCKET).unwrap_or_else(|| {
        panic!("a helper run by another_uid_is_closed_at_once_even_when_gmemd_admits_it")
    });
    let f = VhostFrontend::connect(socket).expect("connect");
    let _ = f.send(FrontendReq::GET_FEATURES, VERSION_1, &[], &[]);
    match f.answer(HANG_UP) {
        Answer::Closed => println!("PROBE: CLOSED"),
        Answer::Reply(_) => println!("PROBE: SERVED"),
        Answer::Silent => println!("PROBE: SILENT"),
    }
}

/// Runs [`probe_helper_run_as_another_uid`] as `uid` against `socket`;
/// returns what it printed.
fn probe_as(uid: Option<u32>, socket: &Path) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "probe_helper_run_as_another_uid",
        "--ignored",
        "--nocapture",
    ])
    .env(PROBE_SOCKET, socket)
    .stdin(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("PROBE: "))
        .unwrap_or_else(|| panic!("the probe printed no result: {text}"))
        .to_owned()
}

#[test]
fn another_uid_is_closed_at_once_even_when_gmemd_admits_it() {
    assert_eq!(
        rustix::process::getuid().as_raw(),
        0,
        "the test runs as root to switch uid"
    );
    // nobody may talk to gmemd, but it is not the VM's principal.
    let mut daemon = Daemon::start_with(&["--allow-uid", &NOBODY.to_string()]);
    let pid = daemon.pid();
    let dev = DeviceVm::new(&daemon, "uid-vm");
    assert_eq!(probe_as(Some(NOBODY), &dev.socket), "CLOSED");
    // The device thread may close before its log line is out.
    wait_until(
        Duration::from_secs(10),
        "the refusal in gmemd's log",
        || daemon.log().contains("is not VM").then_some(()),
    );
    // The same probe as the VM's principal is served: the refusal was
    // about the uid.
    assert_eq!(probe_as(None, &dev.socket), "SERVED");
    alive(&mut daemon, pid);
}

#[test]
fn a_good_table_confirms_and_records_until_the_connection_closes() {
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let mut dev = DeviceVm::new(&daemon, "table-vm");
    dev.lease
        .bind(&BindRequest::new(
            0,
            GuestAddress(0),
            name("ram"),
            0,
            2 * MIB,
        ))
        .unwrap();
    assert_eq!(ram_bindings(&daemon), [(0, 0, 0, 2 * MIB, false)]);

    let f = frontend(&dev.socket);
    let table = [
        MemRegion::new(0, 2 * MIB, 0),
        MemRegion::new(0x1_0000_0000, 2 * MIB, 2 * MIB),
    ];
    assert_eq!(
        f.set_mem_table(&table, &[dev.ram.as_fd(), dev.ram.as_fd()]),
        Some(0)
    );
    // The bound range is confirmed; the other is recorded in the lease.
    let slot = RECORDED_SLOT_BASE;
    wait_until(Duration::from_secs(10), "the table in the status", || {
        let b = ram_bindings(&daemon);
        (b == [
            (0, 0, 0, 2 * MIB, true),
            (slot, 0x1_0000_0000, 2 * MIB, 2 * MIB, true),
        ])
        .then_some(())
    });
    drop(f);
    // Nothing maps them any more.
    wait_until(Duration::from_secs(10), "the bindings un-confirmed", || {
        let b = ram_bindings(&daemon);
        b.iter().all(|b| !b.4).then_some(b)
    });
    alive(&mut daemon, pid);
}

#[test]
fn a_flood_of_connections_gets_four_served_and_gmemd_answers_on() {
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let dev = DeviceVm::new(&daemon, "flood-vm");
    let flood: Vec<VhostFrontend> = (0..20)
        .map(|_| VhostFrontend::connect(&dev.socket).expect("connect"))
        .collect();
    let served = flood.iter().filter(|f| still_served(f)).count();
    assert!(
        (1..=MAX_CONNECTIONS).contains(&served),
        "{served} of 20 served"
    );
    eprintln!("{served} of 20 simultaneous connections served");
    alive(&mut daemon, pid);
    drop(flood);
    // The slots come back once the flood is gone.
    let again = wait_until(Duration::from_secs(10), "the slots to free up", || {
        let conns: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| VhostFrontend::connect(&dev.socket).expect("connect"))
            .collect();
        conns.iter().all(still_served).then_some(conns)
    });
    assert_eq!(again.len(), MAX_CONNECTIONS);
    alive(&mut daemon, pid);
}

#[test]
fn stalled_frontends_block_nobody_else() {
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let dev = DeviceVm::new(&daemon, "stall-vm");

    // One sends half a message and stalls.
    let half = VhostFrontend::connect(&dev.socket).unwrap();
    let whole = message(
        FrontendReq::SET_MEM_TABLE as u32,
        VERSION_1,
        &table_payload(&[MemRegion::new(0, MIB, 0)]),
    );
    half.send_raw(&whole[..20], &[dev.ram.as_fd()]).unwrap();
    // One asks and asks and never reads an answer, until its socket is full.
    let deaf = frontend(&dev.socket);
    deaf.stream().set_nonblocking(true).unwrap();
    let ask = message(FrontendReq::GET_FEATURES as u32, VERSION_1, &[]);
    // It keeps asking until the stall has reached gmemd: a thread of it
    // sleeps sending a reply the deaf frontend does not read (each time
    // gmemd reads on, there is room for more requests, so its replies pile
    // up until it blocks). That is where a gmemd whose device connections
    // could block one another (or the daemon) would now be stuck, so the
    // checks below are made in that state, not after a fixed wait that may
    // come too soon. (A gmemd that never sleeps in a send, buffering
    // instead, would need another sign here.)
    let t0 = Instant::now();
    let mut sent = 0u64;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no gmemd thread blocked sending to the deaf frontend after {sent} requests"
        );
        match deaf.send_raw(&ask, &[]) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sleeping_in_a_send(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("the deaf frontend was cut off: {e}"),
        }
    }
    eprintln!("the deaf frontend got {sent} requests in before gmemd blocked");

    // gmemd answers, the same device serves others, another VM's device
    // serves too.
    alive(&mut daemon, pid);
    let t0 = Instant::now();
    let other = DeviceVm::new(&daemon, "stall-other-vm");
    let f = frontend(&other.socket);
    assert_eq!(
        f.set_mem_table(&[MemRegion::new(0, MIB, 0)], &[other.ram.as_fd()]),
        Some(0)
    );
    let same = frontend(&dev.socket);
    assert_eq!(
        same.set_mem_table(&[MemRegion::new(0, MIB, 0)], &[dev.ram.as_fd()]),
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop((f, same));

    // The stalled ones hold their slots only while they are connected.
    drop((half, deaf));
    let all = wait_until(Duration::from_secs(10), "the slots to free up", || {
        let conns: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| VhostFrontend::connect(&dev.socket).expect("connect"))
            .collect();
        conns.iter().all(still_served).then_some(conns)
    });
    assert_eq!(all.len(), MAX_CONNECTIONS);
    alive(&mut daemon, pid);
}

/// A second frontend's table moves the VM's binding to its own GPA
/// (PROTOCOL.md §7.15: "moved to QEMU's gpa"); when it hangs up, the first
/// connection's table, still current, is applied again: the binding is
/// back where the real QEMU maps it, confirmed.
#[test]
fn a_second_frontend_that_leaves_does_not_leave_a_binding_moved() {
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let mut dev = DeviceVm::new(&daemon, "move-vm");
    dev.lease
        .bind(&BindRequest::new(
            0,
            GuestAddress(0),
            name("ram"),
            0,
            2 * MIB,
        ))
        .unwrap();
    // The real QEMU: maps the binding where it is.
    let qemu = frontend(&dev.socket);
    assert_eq!(
        qemu.set_mem_table(&[MemRegion::new(0, 2 * MIB, 0)], &[dev.ram.as_fd()]),
        Some(0)
    );
    wait_until(Duration::from_secs(10), "QEMU's table", || {
        (ram_bindings(&daemon) == [(0, 0, 0, 2 * MIB, true)]).then_some(())
    });
    // A second frontend maps the same range at a hostile address: the
    // binding moves there (so the test below is not vacuous), then it goes.
    let hostile = frontend(&dev.socket);
    assert_eq!(
        hostile.set_mem_table(
            &[MemRegion::new(HOSTILE_GPAS[0], 2 * MIB, 0)],
            &[dev.ram.as_fd()]
        ),
        Some(0)
    );
    wait_until(Duration::from_secs(10), "the binding moved", || {
        (ram_bindings(&daemon) == [(0, HOSTILE_GPAS[0], 0, 2 * MIB, true)]).then_some(())
    });
    drop(hostile);
    // QEMU still maps the range at 0: that is where the binding belongs
    // once gmemd has seen the hostile connection end. Left at the hostile
    // address (the bug), this wait runs out.
    wait_until(Duration::from_secs(10), "the binding back at 0", || {
        (ram_bindings(&daemon) == [(0, 0, 0, 2 * MIB, true)]).then_some(())
    });
    assert!(still_served(&qemu));
    assert_eq!(ram_bindings(&daemon), [(0, 0, 0, 2 * MIB, true)]);
    alive(&mut daemon, pid);
}
