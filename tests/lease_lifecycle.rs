//! Leases end with their connection (DESIGN invariant 4), memory outlives
//! the VMM, sizes are sealed (8), deposited memfds included, revoke
//! destroys only the revoked VM's content (7), a VM's memory reaches
//! another VM only as a copy in a fresh inode, whoever kept an fd of it
//! (6), and memory a process still holds stays charged until it exits.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, FileRef, MemoryKind, VmSelector};
use gmem_tests::{name, vm, wait_until, Daemon};
use rustix::io::Errno;

const MIB: u64 = 1 << 20;

/// Slot 0 at guest address 0: the first MiB of `file`.
fn first_mib_of(file: &str) -> BindRequest {
    BindRequest::new(0, GuestAddress(0), name(file), 0, MIB)
}

fn read_at(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf, offset).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn sigkill_ends_the_lease_and_keeps_the_memory() {
    let daemon = Daemon::start();
    let mut child = daemon.spawn_client(
        "vm-a",
        &[
            "--create",
            "ram:0x400000",
            "--write",
            "ram:0x1000:hello-from-vm-a",
            "--bind",
            "ram:0:0:0:0x100000",
            "--bind",
            "ram:1:0x100000:0x100000:0x100000",
            "--hold",
        ],
    );
    let mut ctl = daemon.control();
    let leases = ctl.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].pid, child.pid());
    assert_eq!(leases[0].bindings, 2);
    assert_eq!(ctl.files().unwrap()[0].bindings.len(), 2);

    child.kill9();
    daemon.wait_no_leases();
    let files = ctl.files().unwrap();
    assert_eq!(files.len(), 1, "the memory file stays");
    assert!(files[0].owner.is_none());
    assert!(files[0].bindings.is_empty());

    // Another VM's "ram" is its own: vm-a's is not there for it.
    let mut b = daemon.lease(vm("vm-b"));
    let err = b.open(&name("ram")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::NOENT.raw_os_error()), "{err}");
    drop(b);
    // vm-a's next VMM finds it, content intact.
    let mut a = daemon.lease(vm("vm-a"));
    let (fd, info) = a.open(&name("ram")).unwrap();
    assert_eq!(info.size, 4 * MIB);
    assert_eq!(read_at(&fd, 0x1000, 15), b"hello-from-vm-a");
    a.bind(&first_mib_of("ram")).unwrap();
    assert!(daemon.log().contains("dropped binding slot 1"));
}

#[test]
fn content_written_through_a_mapping_outlives_the_client() {
    let daemon = Daemon::start();
    let mut child = daemon.spawn_client(
        "writer",
        &[
            "--create",
            "mem:0x200000",
            "--write",
            "mem:0x1ff000:persisted bytes",
        ],
    );
    assert!(child.wait_exit(Duration::from_secs(10)).success());
    daemon.wait_no_leases();
    let mut again = daemon.lease(vm("writer"));
    let (fd, _) = again.open(&name("mem")).unwrap();
    assert_eq!(read_at(&fd, 0x1f_f000, 15), b"persisted bytes");
}

#[test]
fn received_fds_are_sealed() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let (fd, _) = a.create(&name("ram"), 2 * MIB, MemoryKind::Memfd).unwrap();
    assert_eq!(rustix::fs::ftruncate(&fd, MIB), Err(Errno::PERM));
    assert_eq!(rustix::fs::ftruncate(&fd, 8 * MIB), Err(Errno::PERM));
    // Nobody can add F_SEAL_WRITE and freeze the guest's RAM.
    assert_eq!(
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::WRITE),
        Err(Errno::PERM)
    );
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 2 << 20);
    let flags = rustix::io::fcntl_getfd(&fd).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
}

/// DESIGN invariant 8 for DEPOSIT, through the socket: the memfd a VMM
/// made itself is sealed by gmemd once adopted, on the VMM's own fd too
/// (seals belong to the file), and exactly as PROTOCOL.md §7.6 says; a
/// refused deposit leaves the fd as it came.
#[test]
fn a_deposited_memfd_is_sealed_on_the_depositors_own_fd() {
    use rustix::fs::{fcntl_add_seals, fcntl_get_seals, MemfdFlags, SealFlags};

    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let fd = rustix::fs::memfd_create("vmm-ram", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, 2 * MIB).unwrap();
    assert_eq!(fcntl_get_seals(&fd).unwrap(), SealFlags::empty());
    // Refused (the name is taken): not sealed, still resizable.
    a.create(&name("taken"), MIB, MemoryKind::Memfd).unwrap();
    let err = a
        .deposit(&name("taken"), MemoryKind::Memfd, fd.as_fd())
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EXIST.raw_os_error()), "{err}");
    assert_eq!(fcntl_get_seals(&fd).unwrap(), SealFlags::empty());

    let info = a
        .deposit(&name("ram"), MemoryKind::Memfd, fd.as_fd())
        .unwrap();
    assert_eq!(info.size, 2 * MIB);
    assert_eq!(
        fcntl_get_seals(&fd).unwrap(),
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        "the depositor's fd after DEPOSIT"
    );
    assert_eq!(rustix::fs::ftruncate(&fd, MIB), Err(Errno::PERM));
    assert_eq!(rustix::fs::ftruncate(&fd, 4 * MIB), Err(Errno::PERM));
    assert_eq!(
        fcntl_add_seals(&fd, SealFlags::WRITE),
        Err(Errno::PERM),
        "anyone could freeze the guest's RAM"
    );
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 2 << 20);
    // Still the guest's RAM: what the VMM writes, gmemd's file holds.
    rustix::io::pwrite(&fd, b"deposited", 0x1000).unwrap();
    let (again, _) = a.open(&name("ram")).unwrap();
    assert_eq!(read_at(&again, 0x1000, 9), b"deposited");
}

#[test]
fn revoke_ends_the_lease_and_destroys_only_that_vms_content() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let mut b = daemon.lease(vm("vm-b"));
    let (a_fd, _) = a.create(&name("a-ram"), MIB, MemoryKind::Memfd).unwrap();
    let (b_fd, _) = b.create(&name("b-ram"), MIB, MemoryKind::Memfd).unwrap();
    rustix::io::pwrite(&a_fd, b"secret of a", 0).unwrap();
    rustix::io::pwrite(&b_fd, b"data of b", 0).unwrap();
    for (client, file) in [(&mut a, "a-ram"), (&mut b, "b-ram")] {
        client.bind(&first_mib_of(file)).unwrap();
    }

    let report = daemon
        .control()
        .revoke(&VmSelector::Name(name("vm-a")))
        .unwrap();
    assert_eq!((report.leases, report.bindings, report.scrubbed), (1, 1, 1));

    // The revoked VMM's connection is closed: its next request fails, for
    // that reason (not a refusal, not a timeout of an open connection).
    let err = a.unbind(0).unwrap_err();
    assert!(
        matches!(&err, gmem_protocol::ClientError::Conn(e) if e.is_hangup()),
        "the revoked lease's connection: {err:?}"
    );
    // What it kept reads zeros...
    assert_eq!(read_at(&a_fd, 0, 11), vec![0; 11]);
    // ...and what it writes now reaches nobody who opens the file later,
    // vm-a's next VMM included.
    rustix::io::pwrite(&a_fd, b"late write", 0).unwrap();
    let mut again = daemon.lease(vm("vm-a"));
    let (fresh, _) = again.open(&name("a-ram")).unwrap();
    assert_eq!(read_at(&fresh, 0, 10), vec![0; 10]);
    // vm-b is untouched.
    assert_eq!(read_at(&b_fd, 0, 9), b"data of b");
    let files = daemon.control().files().unwrap();
    let b_file = files.iter().find(|f| f.name.as_str() == "b-ram").unwrap();
    assert_eq!(b_file.owner.as_ref().unwrap().vm.name.as_str(), "vm-b");
    assert!(daemon.log().contains("revoked VM"));
}

#[test]
fn memory_reaches_another_vm_only_by_transfer_into_a_fresh_inode() {
    let daemon = Daemon::start();
    let mut holder = daemon.spawn_client(
        "vm-a",
        &[
            "--create",
            "ram:0x100000",
            "--write",
            "ram:0:vm-a-data",
            "--hold",
        ],
    );
    // A process of vm-a, alive and holding the fd; a spy keeps one too.
    let mut ctl = daemon.control();
    let vm_a_ram = FileRef::vm(VmSelector::Name(name("vm-a")), name("ram"));
    let (spy, _) = ctl.open_in(&vm_a_ram).unwrap();
    // vm-b cannot name it: "ram" on vm-b's lease is vm-b's file.
    let mut b = daemon.lease(vm("vm-b"));
    let err = b.bind(&first_mib_of("ram")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::NOENT.raw_os_error()), "{err}");
    // (Asking for it by vm-a's name takes an operator: see `tenants`.)
    // An operator hands it over while vm-a's holder still lives: vm-b gets
    // the content, in an inode no earlier fd reaches.
    holder.kill9();
    wait_until(Duration::from_secs(10), "vm-a's lease to end", || {
        let leases = daemon.control().leases().unwrap();
        (!leases.iter().any(|l| l.vm.name.as_str() == "vm-a")).then_some(())
    });
    let to_b = FileRef::vm(VmSelector::Name(name("vm-b")), name("ram"));
    ctl.transfer(&vm_a_ram, &to_b).unwrap();
    let (fd, _) = b.open(&name("ram")).unwrap();
    assert_eq!(read_at(&fd, 0, 9), b"vm-a-data");
    b.bind(&first_mib_of("ram")).unwrap();
    rustix::io::pwrite(&fd, b"vm-b-secret", 0x800).unwrap();
    // The spy's fd: zeros, and what it writes stays with it.
    assert_eq!(read_at(&spy, 0, 9), vec![0; 9]);
    assert_eq!(read_at(&spy, 0x800, 11), vec![0; 11]);
    rustix::io::pwrite(&spy, b"planted", 0x100).unwrap();
    assert_eq!(read_at(&fd, 0x100, 7), vec![0; 7]);
    assert!(daemon.log().contains("transferred vm-a/ram to vm-b/ram"));

    // A scrub cuts a live holder off too, and leaves zeros.
    let _holder2 = daemon.spawn_client(
        "vm-c",
        &[
            "--create",
            "ram:0x100000",
            "--write",
            "ram:0:vm-c-data",
            "--hold",
        ],
    );
    let vm_c_ram = FileRef::vm(VmSelector::Name(name("vm-c")), name("ram"));
    ctl.scrub_in(&vm_c_ram).unwrap();
    let (fd, _) = ctl.open_in(&vm_c_ram).unwrap();
    assert_eq!(read_at(&fd, 0, 9), vec![0; 9]);
}

#[test]
fn a_lease_that_revokes_itself_is_served_nothing_after_but_answered() {
    use std::io::Write;

    use gmem_protocol::conn::FrameReader;
    use gmem_protocol::wire::{Header, Reply, Request, RequestBody, StatusQuery, StatusSection};

    let daemon = Daemon::start();
    let mut op = daemon.lease(vm("operator-vm"));
    op.create(&name("op-ram"), MIB, MemoryKind::Memfd).unwrap();
    let stream = op.stream().try_clone().unwrap();
    // REVOKE of itself and a STATUS pipelined behind it, in one write.
    let mut bytes = Vec::new();
    for body in [
        RequestBody::Revoke(VmSelector::Name(name("operator-vm"))),
        RequestBody::Status(StatusQuery {
            section: StatusSection::Files,
            start: 0,
        }),
    ] {
        let payload = body.encode();
        bytes.extend_from_slice(&Header::request(body.request(), payload.len()).to_bytes());
        bytes.extend_from_slice(&payload);
    }
    (&stream).write_all(&bytes).unwrap();
    let mut reader = FrameReader::new();
    let first = reader.read_frame(stream.as_fd()).unwrap().unwrap();
    assert_eq!(first.header.code, Request::Revoke.code());
    assert_eq!(Reply::decode(&first.payload).unwrap().status, 0);
    // The STATUS behind it is answered, not served, and the connection ends.
    let second = reader.read_frame(stream.as_fd()).unwrap().unwrap();
    assert_eq!(second.header.code, Request::Status.code());
    let reply = Reply::decode(&second.payload).unwrap();
    assert_eq!(
        reply.status,
        -Errno::CONNABORTED.raw_os_error(),
        "{reply:?}"
    );
    assert!(reply.text.contains("revoked"), "{}", reply.text);
    // Closed, not merely silent (a read of an open connection would time
    // out, an error too).
    match reader.read_frame(stream.as_fd()) {
        Err(e) if e.is_hangup() => {}
        other => panic!("the connection of a revoked lease stays open: {other:?}"),
    }
}

#[test]
fn fds_handed_on_with_the_lease_are_charged_until_their_keeper_exits() {
    // Root's VMs may have 2 MiB between them.
    let daemon = Daemon::start_with(&["--quota-memory", "2M"]);
    // A launcher stand-in: gets the file for vm-a, passes its lease socket to
    // a child (as gmemctl launch does with QEMU) and exits.
    let mut launcher = gmem_tests::ChildGuard::spawn_piped(
        "launcher",
        daemon.client_command("vm-a", &["--create", "ram:0x100000", "--handoff"]),
    );
    let out = launcher.wait_for_output("HANDOFF", Duration::from_secs(10));
    let keeper: i32 = out
        .split("HANDOFF ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .expect("keeper pid");
    assert!(launcher.wait_exit(Duration::from_secs(10)).success());
    // STATUS shows the process that holds the lease now.
    let leases = daemon.control().leases().unwrap();
    assert_eq!(leases[0].pid, u32::try_from(keeper).unwrap(), "{leases:?}");
    let keeper = rustix::process::Pid::from_raw(keeper).unwrap();
    // An operator destroys vm-a's file. Whoever keeps its lease may hold
    // the fd and fill it, so its MiB still counts against root's quota.
    let vm_a_ram = FileRef::vm(VmSelector::Name(name("vm-a")), name("ram"));
    daemon.control().destroy_in(&vm_a_ram).unwrap();
    let mut z = daemon.lease(vm("vm-z"));
    let big =
        |z: &mut gmem_protocol::Client| z.create(&name("big"), 3 * MIB / 2, MemoryKind::Memfd);
    let err = big(&mut z).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::DQUOT.raw_os_error()), "{err}");
    assert!(err.message().unwrap().contains("uid 0"), "{err}");
    // The keeper goes: the lease ends, and nothing can reach that MiB.
    rustix::process::kill_process(keeper, rustix::process::Signal::KILL).unwrap();
    wait_until(Duration::from_secs(10), "vm-a's lease to end", || {
        let leases = daemon.control().leases().unwrap();
        (!leases.iter().any(|l| l.vm.name.as_str() == "vm-a")).then_some(())
    });
    big(&mut z).unwrap();
}

/// Holder liveness (PROTOCOL.md §6.5, §8 rule 6): memory gmemd let go of
/// stays charged while a process it was handed to still runs, even once
/// the lease it came through has ended, and is freed when that process
/// exits. (The test above keeps the lease open; this one closes it.)
#[test]
fn a_process_that_kept_an_fd_past_its_lease_is_charged_until_it_exits() {
    use gmem_tests::tenant::spawn_tenant;

    // Root's VMs may have 2 MiB between them.
    let daemon = Daemon::start_with(&["--quota-memory", "2M"]);
    // A VMM stand-in gets vm-a's MiB, writes into it, closes its lease
    // socket and goes on holding the fd.
    let mut holder = spawn_tenant(
        &daemon,
        None,
        &[
            "--vm",
            "vm-a",
            "create:ram:0x100000",
            "write:ram:0:still-here",
            "end-lease",
            "hold",
        ],
    );
    let out = holder.wait_for_output("HOLDING", Duration::from_secs(30));
    assert!(out.contains("end-lease => OK"), "{out}");
    wait_until(Duration::from_secs(10), "vm-a's lease to end", || {
        let leases = daemon.control().leases().unwrap();
        (!leases.iter().any(|l| l.vm.name.as_str() == "vm-a")).then_some(())
    });
    // An operator destroys the file: the ledger forgets it, the holder
    // does not, so its MiB still counts against root's quota.
    let vm_a_ram = FileRef::vm(VmSelector::Name(name("vm-a")), name("ram"));
    daemon.control().destroy_in(&vm_a_ram).unwrap();
    let mut z = daemon.lease(vm("vm-z"));
    let big =
        |z: &mut gmem_protocol::Client| z.create(&name("big"), 3 * MIB / 2, MemoryKind::Memfd);
    let err = big(&mut z)
        .expect_err("the MiB a live process holds was not charged once its lease had ended");
    assert_eq!(err.errno(), Some(Errno::DQUOT.raw_os_error()), "{err}");
    assert!(err.message().unwrap().contains("uid 0"), "{err}");
    // The holder exits: nothing can reach that MiB any more. (Its pidfd
    // reports the exit a moment after the kill.)
    holder.kill9();
    wait_until(
        Duration::from_secs(10),
        "the memory of the holder that exited to be free",
        || big(&mut z).ok(),
    );
}

#[test]
fn handoff_names_only_a_process_that_holds_the_lease_socket() {
    use std::os::fd::AsRawFd;

    use rustix::process::{pidfd_open, Pid, PidfdFlags};

    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let me = std::process::id();
    // A process without the socket is refused, and STATUS keeps the truth.
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("60");
    let mut stranger = gmem_tests::ChildGuard::spawn("sleep", sleep);
    let pidfd = pidfd_open(
        Pid::from_raw(i32::try_from(stranger.pid()).unwrap()).unwrap(),
        PidfdFlags::empty(),
    )
    .unwrap();
    let err = a.handoff(pidfd.as_fd(), 0).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::PERM.raw_os_error()), "{err}");
    assert!(err.message().unwrap().contains("does not hold"), "{err}");
    assert_eq!(daemon.control().leases().unwrap()[0].pid, me);
    // Neither is a process that is gone, nor an fd that is no pidfd.
    stranger.kill9();
    let err = a.handoff(pidfd.as_fd(), 0).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::SRCH.raw_os_error()), "{err}");
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let err = a.handoff(memfd.as_fd(), 0).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::INVAL.raw_os_error()), "{err}");
    // This process holds its own lease socket, at the fd it names: accepted.
    let own = pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).unwrap();
    let at = u32::try_from(a.stream().as_raw_fd()).unwrap();
    let err = a.handoff(own.as_fd(), at + 1000).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::PERM.raw_os_error()), "{err}");
    assert_eq!(a.handoff(own.as_fd(), at).unwrap(), me);
    // A control session has no lease to hand off.
    let err = daemon.control().handoff(own.as_fd(), 0).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::PERM.raw_os_error()), "{err}");
}

#[test]
fn requests_in_flight_at_a_revoke_are_answered_not_dropped() {
    use std::io::Write;

    use gmem_protocol::conn::FrameReader;
    use gmem_protocol::wire::{Header, Reply, Request, RequestBody, StatusQuery, StatusSection};

    let daemon = Daemon::start();
    // Files enough that a files page is ~4 KiB: a few dozen unread replies
    // fill the socket, and gmemd stops reading the client (backpressure).
    let mut ctl = daemon.control();
    for n in 0..23 {
        ctl.create(&name(&format!("file-{n:02}")), 4096, MemoryKind::Memfd)
            .unwrap();
    }
    let x = daemon.lease(vm("vm-x"));
    let stream = x.stream().try_clone().unwrap();
    let status = RequestBody::Status(StatusQuery {
        section: StatusSection::Files,
        start: 0,
    })
    .encode();
    const SENT: usize = 300;
    let mut bytes = Vec::new();
    for _ in 0..SENT {
        bytes.extend_from_slice(&Header::request(Request::Status, status.len()).to_bytes());
        bytes.extend_from_slice(&status);
    }
    // gmemd serves what fits and leaves the rest in the socket.
    (&stream).write_all(&bytes).unwrap();
    ctl.revoke(&VmSelector::Name(name("vm-x"))).unwrap();

    let mut reader = FrameReader::new();
    let (mut served, mut aborted) = (0, 0);
    while let Ok(Some(frame)) = reader.read_frame(stream.as_fd()) {
        let reply = Reply::decode(&frame.payload).unwrap();
        if reply.status == 0 {
            assert_eq!(aborted, 0, "a request was served after the revoke");
            served += 1;
        } else {
            assert_eq!(
                reply.status,
                -Errno::CONNABORTED.raw_os_error(),
                "{reply:?}"
            );
            assert!(reply.text.contains("revoked"), "{}", reply.text);
            aborted += 1;
        }
    }
    eprintln!("{served} served before the revoke, {aborted} answered ECONNABORTED");
    assert!(aborted > 0, "the revoke found nothing in flight");
    assert_eq!(served + aborted, SENT, "requests went unanswered");
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat; 2 of them sit before ')'.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_revoked_client_that_never_reads_costs_gmemd_nothing() {
    use std::io::Write;

    use gmem_protocol::wire::{Header, Request, RequestBody, StatusQuery, StatusSection};

    let daemon = Daemon::start();
    let mut ctl = daemon.control();
    for n in 0..23 {
        ctl.create(&name(&format!("file-{n:02}")), 4096, MemoryKind::Memfd)
            .unwrap();
    }
    let x = daemon.lease(vm("vm-x"));
    let stream = x.stream().try_clone().unwrap();
    let status = RequestBody::Status(StatusQuery {
        section: StatusSection::Files,
        start: 0,
    })
    .encode();
    let mut bytes = Vec::new();
    for _ in 0..300 {
        bytes.extend_from_slice(&Header::request(Request::Status, status.len()).to_bytes());
        bytes.extend_from_slice(&status);
    }
    (&stream).write_all(&bytes).unwrap();
    ctl.revoke(&VmSelector::Name(name("vm-x"))).unwrap();
    // Its replies sit unread; gmemd waits for it to read, without spinning.
    // Not spinning is CPU time not spent, which only a window of time can
    // show: a busy loop would burn half a second of it within the first
    // ~0.6 s, and the check fails as soon as it has.
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    let before = cpu_ticks(daemon.pid());
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        let used = cpu_ticks(daemon.pid()) - before;
        assert!(
            used * 2 < ticks_per_second,
            "gmemd used {used} ticks (of {ticks_per_second}/s) in {:?} while a revoked \
             client did not read",
            window.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And it still serves everyone else.
    assert_eq!(ctl.files().unwrap().len(), 23);
    drop(stream);
    drop(x);
}

#[test]
fn orphans_show_their_age_and_expire_when_asked() {
    let daemon = Daemon::start_with(&["--expire-orphans", "2s"]);
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("ram"), MIB, MemoryKind::Memfd).unwrap();
    drop(a);
    daemon.wait_no_leases();
    // An orphan: its VM has no lease; its age grows.
    let files = daemon.control().scoped_files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].vm.as_ref().unwrap().name.as_str(), "vm-a");
    // Destroyed once it has been an orphan for 2 s.
    wait_until(Duration::from_secs(10), "the orphan to expire", || {
        daemon.control().files().unwrap().is_empty().then_some(())
    });
    assert!(
        daemon.log().contains("--expire-orphans"),
        "{}",
        daemon.log()
    );
    // Its VM is forgotten with it: its name is free again.
    let mut b = daemon.lease(gmem_protocol::wire::VmId {
        uuid: vm("other").uuid,
        name: name("vm-a"),
    });
    b.create(&name("ram"), MIB, MemoryKind::Memfd).unwrap();
}
