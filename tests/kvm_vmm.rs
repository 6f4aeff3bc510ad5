//! Real KVM memslots from gmemd memory (`/dev/kvm` required; with
//! `GMEM_E2E=require` its absence fails the test): a guest runs from a
//! daemon-owned memory file across VMM processes, survives SIGKILL of its
//! VMM, reaches a second VM only when an operator transfers it (a copy in a
//! fresh inode), runs from a deposited guest_memfd that gmemd lets go of,
//! and the vm-memory adapter sees exactly the daemon's bytes.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Output};
use std::time::Duration;

use gmem_protocol::guest_memory::{guest_memory, RegionSpec};
use gmem_protocol::kvm::{bind_region, KvmBindError};
use gmem_protocol::wire::{FileRef, MemoryKind, VmSelector};
use gmem_tests::{bin, e2e, example, name, vm, wait_until, ChildGuard, Daemon};
// Linux 6.18's guest_memfd flags (not in kvm-bindings 0.14), which
// gmem-vmm --private uses.
use gmemctl::caps::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
use kvm_bindings::kvm_userspace_memory_region2;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// The boot counter's guest-physical address (tests/vmm/guest_code.rs).
const COUNTER_GPA: u64 = 0x1000;

fn gmem_vmm(daemon: &Daemon, vm_name: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("gmem-vmm"));
    cmd.arg("--socket")
        .arg(daemon.socket())
        .args(["--vm", vm_name, "--file", "ram"])
        .args(extra);
    cmd
}

fn run_vmm(daemon: &Daemon, vm_name: &str) -> Output {
    gmem_vmm(daemon, vm_name, &[])
        .output()
        .expect("gmem-vmm runs")
}

fn assert_ran(out: &Output, counter: u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gmem-vmm failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("GMEM-VMM: counter {counter}\n")),
        "{stdout}"
    );
}

/// VM `vm_name`'s file "ram", as an operator names it.
fn ram_of(vm_name: &str) -> FileRef {
    FileRef::vm(VmSelector::Name(name(vm_name)), name("ram"))
}

/// The counter as VM `vm_name`'s file holds it, read through an
/// operator's fd.
fn counter_in_file(daemon: &Daemon, vm_name: &str) -> u64 {
    let (fd, _) = daemon.control().open_in(&ram_of(vm_name)).unwrap();
    read_u64(&fd, COUNTER_GPA)
}

fn read_u64(fd: &OwnedFd, offset: u64) -> u64 {
    let mut buf = [0u8; 8];
    rustix::io::pread(fd, &mut buf, offset).unwrap();
    u64::from_le_bytes(buf)
}

#[test]
fn the_counter_lives_in_gmemd_memory_across_vmm_processes() {
    if !e2e::kvm() {
        return;
    }
    let daemon = Daemon::start();
    const RUNS: u64 = 4;
    for run in 1..=RUNS {
        assert_ran(&run_vmm(&daemon, "vm-a"), run);
    }
    assert_eq!(counter_in_file(&daemon, "vm-a"), RUNS);
    let files = daemon.control().files().unwrap();
    assert!(files[0].owner.is_none() && files[0].bindings.is_empty());
    // Every run bound the file through a lease of its own: one line each,
    // not just one line in all.
    let log = daemon.log();
    let leases: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split_once(": bound slot 0 gpa 0x0 -> ram +0x0 "))
        .filter_map(|(who, _)| who.split("lease ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(leases.len() as u64, RUNS, "{log}");
}

#[test]
fn sigkill_mid_run_keeps_memory_and_the_next_vmm_continues() {
    if !e2e::kvm() {
        return;
    }
    let daemon = Daemon::start();
    assert_ran(&run_vmm(&daemon, "vm-a"), 1);
    let mut looping = ChildGuard::spawn_piped(
        "gmem-vmm",
        gmem_vmm(&daemon, "vm-a", &["--loop", "--delay", "2000"]),
    );
    looping.wait_for_output("GMEM-VMM: tick 3", Duration::from_secs(30));
    let leases = daemon.control().leases().unwrap();
    assert_eq!((leases.len(), leases[0].bindings), (1, 1));
    looping.kill9();
    daemon.wait_no_leases();
    let files = daemon.control().files().unwrap();
    assert!(files[0].bindings.is_empty() && files[0].owner.is_none());
    assert_eq!(
        counter_in_file(&daemon, "vm-a"),
        2,
        "boot counter of the killed run"
    );
    assert_ran(&run_vmm(&daemon, "vm-a"), 3);
}

#[test]
fn another_vm_gets_the_memory_only_by_transfer_never_the_inode() {
    if !e2e::kvm() {
        return;
    }
    let daemon = Daemon::start();
    // 1. While vm-a's VMM runs, vm-b's VMM runs on vm-b's own "ram": its
    //    counter starts at 1, vm-a's memory is out of its reach.
    let mut running = ChildGuard::spawn_piped(
        "gmem-vmm",
        gmem_vmm(&daemon, "vm-a", &["--loop", "--delay", "2000"]),
    );
    running.wait_for_output("GMEM-VMM: tick 1", Duration::from_secs(30));
    assert_ran(&run_vmm(&daemon, "vm-b"), 1);
    // 2. A process of vm-a keeps an fd of its RAM; vm-a's VMM dies.
    let (spy, _) = daemon.control().open_in(&ram_of("vm-a")).unwrap();
    running.kill9();
    daemon.wait_no_leases();
    // 3. An operator hands vm-a's RAM to vm-c (known while it has a
    //    lease): vm-c's guest counts on from vm-a's run, in an inode the
    //    spy's fd does not reach: it reads zeros and its writes reach no
    //    guest.
    let vm_c = daemon.lease(vm("vm-c"));
    let mut ctl = daemon.control();
    ctl.transfer(&ram_of("vm-a"), &ram_of("vm-c")).unwrap();
    drop(vm_c);
    daemon.wait_no_leases();
    assert_eq!(read_u64(&spy, COUNTER_GPA), 0, "the old inode is punched");
    rustix::io::pwrite(&spy, &99u64.to_le_bytes(), COUNTER_GPA).unwrap();
    assert_ran(&run_vmm(&daemon, "vm-c"), 2);
    assert_eq!(read_u64(&spy, COUNTER_GPA), 99);
    // 4. A scrub of vm-c's RAM leaves zeros: its next run counts from 1.
    let holder = daemon.spawn_client("vm-c", &["--open", "ram", "--hold"]);
    wait_until(Duration::from_secs(10), "the holder's lease", || {
        (!daemon.control().leases().unwrap().is_empty()).then_some(())
    });
    drop(holder);
    daemon.wait_no_leases();
    ctl.scrub_in(&ram_of("vm-c")).unwrap();
    assert_eq!(counter_in_file(&daemon, "vm-c"), 0, "scrub leaves zeros");
    assert_ran(&run_vmm(&daemon, "vm-c"), 1);
}

#[test]
fn a_deposited_guest_memfd_runs_the_guest_and_is_let_go() {
    // gmem-vmm --private maps the guest_memfd (MMAP) and loads the guest
    // code into it (INIT_SHARED).
    if !e2e::kvm() || !e2e::guest_memfd(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) {
        return;
    }
    let daemon = Daemon::start();
    let out = gmem_vmm(&daemon, "vm-p", &["--private"])
        .output()
        .expect("gmem-vmm runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deposited guest_memfd as ram"), "{stdout}");
    assert!(stdout.contains("GMEM-VMM: counter 1\n"), "{stdout}");
    daemon.wait_no_leases();
    let log = daemon.log();
    assert!(log.contains("deposited guest_memfd vm-p/ram"), "{log}");
    assert!(log.contains("closed guest_memfd ram"), "{log}");
    let targets = daemon.fd_targets();
    assert!(
        !targets.iter().any(|t| t.contains("kvm-gmem")),
        "gmemd still holds a guest_memfd: {targets:?}"
    );
    assert!(daemon.control().files().unwrap().is_empty());
}

#[test]
fn a_guest_memfd_is_bound_only_by_the_vm_that_deposited_it() {
    use std::os::fd::FromRawFd;

    use gmem_protocol::wire::BindRequest;
    use rustix::io::Errno;

    if !e2e::kvm() || !e2e::guest_memfd(0) {
        return;
    }
    const SIZE: u64 = 2 << 20;
    let daemon = Daemon::start();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let kvm_vm = kvm.create_vm().unwrap();
    let raw = kvm_vm
        .create_guest_memfd(kvm_bindings::kvm_create_guest_memfd {
            size: SIZE,
            flags: 0,
            reserved: [0; 6],
        })
        .unwrap();
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
    let gmem = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut a = daemon.lease(vm("vm-a"));
    a.deposit(&name("private"), MemoryKind::GuestMemfd, gmem.as_fd())
        .unwrap();
    drop(gmem);

    // The kernel binds a guest_memfd to its own VM only: another VM cannot
    // even name it, and an operator's REVOKE of that VM leaves it alone.
    let bind = BindRequest::new(0, GuestAddress(0), name("private"), 0, SIZE);
    let mut b = daemon.lease(vm("vm-b"));
    let err = b.bind(&bind).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::NOENT.raw_os_error()), "{err}");
    // Nor can it be moved to one.
    let err = daemon
        .control()
        .transfer(
            &FileRef::vm(VmSelector::Name(name("vm-a")), name("private")),
            &FileRef::vm(VmSelector::Name(name("vm-b")), name("private")),
        )
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::PERM.raw_os_error()), "{err}");
    assert!(err.message().unwrap().contains("guest_memfd"), "{err}");
    let report = daemon
        .control()
        .revoke(&gmem_protocol::VmSelector::Name(name("vm-b")))
        .unwrap();
    assert_eq!((report.bindings, report.scrubbed), (0, 0));
    // Its own VM binds it.
    a.bind(&bind).unwrap();

    // The depositor's lease ends: nothing can bind the guest_memfd any more,
    // so gmemd lets go of it and keeps no KVM VM alive (invariant 5).
    drop(a);
    daemon.wait_no_leases();
    assert!(daemon.control().files().unwrap().is_empty());
    let targets = daemon.fd_targets();
    assert!(
        !targets.iter().any(|t| t.contains("kvm-gmem")),
        "gmemd still holds a guest_memfd: {targets:?}"
    );
}

#[test]
fn guest_memory_from_gmemd_fds_is_the_daemons_file() {
    let daemon = Daemon::start();
    let mut client = daemon.lease(vm("vm-a"));
    let (fd, _) = client
        .create(&name("ram"), 8 << 20, MemoryKind::Memfd)
        .unwrap();
    let mem = guest_memory(&[
        RegionSpec {
            fd: fd.as_fd(),
            file_offset: 0,
            gpa: GuestAddress(0),
            size: 1 << 20,
        },
        RegionSpec {
            fd: fd.as_fd(),
            file_offset: 4 << 20,
            gpa: GuestAddress(1 << 30),
            size: 2 << 20,
        },
        RegionSpec {
            fd: fd.as_fd(),
            file_offset: 2 << 20,
            gpa: GuestAddress(4 << 30),
            size: 1 << 20,
        },
    ])
    .unwrap();
    // The daemon's own fd of the file, through /proc (the test runs as root).
    let daemon_fd = daemon
        .fd_targets_with_paths()
        .into_iter()
        .find(|(_, target)| target.starts_with("/memfd:gmemd:ram"))
        .map(|(path, _)| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap()
        })
        .expect("gmemd holds the file");
    let daemon_fd = OwnedFd::from(daemon_fd);
    for (gpa, file_offset) in [
        (0x10u64, 0x10u64),
        ((1 << 30) + 0x2345, (4 << 20) + 0x2345),
        ((4 << 30) + 8, (2 << 20) + 8),
    ] {
        mem.write_obj(gpa ^ 0x5a5a, GuestAddress(gpa)).unwrap();
        assert_eq!(
            read_u64(&daemon_fd, file_offset),
            gpa ^ 0x5a5a,
            "write at {gpa:#x}"
        );
        rustix::io::pwrite(&daemon_fd, &(!gpa).to_le_bytes(), file_offset).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(gpa)).unwrap(),
            !gpa,
            "read at {gpa:#x}"
        );
    }
    assert_eq!(mem.num_regions(), 3);
}

#[test]
fn kvm_and_the_ledger_never_disagree() {
    if !e2e::kvm() {
        return;
    }
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let mut b = daemon.lease(vm("vm-b"));
    let (fd, _) = a.create(&name("ram"), 2 << 20, MemoryKind::Memfd).unwrap();
    let mem = guest_memory(&[RegionSpec {
        fd: fd.as_fd(),
        file_offset: 0,
        gpa: GuestAddress(0),
        size: 1 << 20,
    }])
    .unwrap();
    let region = mem.iter().next().unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm_fd = kvm.create_vm().unwrap();

    // gmemd refuses (vm-a's file is not in vm-b's namespace: ENOENT,
    // PROTOCOL.md §7.4): KVM is never asked, slot 0 stays free.
    // SAFETY: `mem` outlives `vm_fd` (declared earlier, dropped later).
    unsafe { bind_region(&vm_fd, &mut a, 0, region, &name("ram"), None) }.unwrap();
    let other = kvm.create_vm().unwrap();
    // SAFETY: as above.
    let err = unsafe { bind_region(&other, &mut b, 0, region, &name("ram"), None) }.unwrap_err();
    match &err {
        KvmBindError::Refused { slot: 0, source } => {
            assert_eq!(source.errno(), Some(libc::ENOENT), "{err}: {source}");
        }
        other => panic!("not gmemd's refusal of slot 0: {other}"),
    }
    // Had KVM been told, this raw registration of slot 0 would collide.
    let raw = kvm_userspace_memory_region2 {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: region.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: the mapping outlives `other`.
    unsafe { other.set_user_memory_region2(raw) }.unwrap();

    // KVM refuses (slot 40000 is past KVM's memslot limit; gmemd has no
    // such limit): the BIND is undone.
    let mem2 = guest_memory(&[RegionSpec {
        fd: fd.as_fd(),
        file_offset: 1 << 20,
        gpa: GuestAddress(16 << 20),
        size: 1 << 20,
    }])
    .unwrap();
    let region2 = mem2.iter().next().unwrap();
    // SAFETY: the registration fails, so KVM never holds on to `mem2`.
    let err =
        unsafe { bind_region(&vm_fd, &mut a, 40_000, region2, &name("ram"), None) }.unwrap_err();
    match &err {
        KvmBindError::Kvm {
            slot: 40_000,
            rolled_back: true,
            source,
        } => assert_eq!(source.errno(), libc::EINVAL, "{err}: {source}"),
        other => panic!("not KVM's refusal of slot 40000, rolled back: {other}"),
    }
    let files = daemon.control().files().unwrap();
    let slots: Vec<u32> = files[0].bindings.iter().map(|b| b.slot).collect();
    assert_eq!(
        slots,
        vec![0],
        "only the binding KVM accepted is in the ledger"
    );
}

#[test]
fn the_readme_example_binds_gmemd_memory_into_kvm() {
    if !e2e::kvm() {
        return;
    }
    let daemon = Daemon::start();
    let out = Command::new(example("rust_vmm"))
        .arg(daemon.socket())
        .output()
        .expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("536870912 bytes of gmemd memory bound into KVM"));
    assert!(daemon.log().contains("bound slot 0 gpa 0x0 -> vm1-ram"));
}
