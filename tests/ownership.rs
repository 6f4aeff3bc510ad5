//! DESIGN invariants 1, 2 and 6 over the real socket: ownership follows the
//! first BIND and ends with the last UNBIND; each VM names only its own
//! files; every validation refuses with its own error and changes nothing.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use gmem_protocol::wire::{BindRequest, FileRef, GuestAddress, MemoryKind, VmSelector};
use gmem_protocol::{ClientError, FileStatus};
use gmem_tests::{name, vm, wait_until, Daemon};
use rustix::io::Errno;

const MIB: u64 = 1 << 20;

fn bind(file: &str, slot: u32, gpa: u64, offset: u64, size: u64) -> BindRequest {
    BindRequest::new(slot, GuestAddress(gpa), name(file), offset, size)
}

fn errno_of(err: &ClientError) -> Errno {
    Errno::from_raw_os_error(err.errno().expect("a refusal, not a transport error"))
}

fn file_status(daemon: &Daemon, file: &str) -> FileStatus {
    daemon
        .control()
        .files()
        .unwrap()
        .into_iter()
        .find(|f| f.name.as_str() == file)
        .expect("file listed")
}

#[test]
fn first_bind_owns_another_vm_cannot_name_it_last_unbind_frees() {
    // Root as a plain client: operators (uid 4242 here) may name any file.
    let daemon = Daemon::start_with(&["--allow-uid", "0", "--admin-uid", "4242"]);
    let mut a = daemon.lease(vm("vm-a"));
    let mut b = daemon.lease(vm("vm-b"));
    a.create(&name("ram"), 4 * MIB, MemoryKind::Memfd).unwrap();

    a.bind(&bind("ram", 0, 0, 0, MIB)).unwrap();
    a.bind(&bind("ram", 1, 0x10_0000, MIB, MIB)).unwrap();
    let owner = file_status(&daemon, "ram").owner.expect("owned");
    assert_eq!(owner.vm.name.as_str(), "vm-a");
    assert_eq!(Some(owner.lease), a.lease());

    // "ram" on vm-b's lease is vm-b's own file, and it has none yet.
    let err = b.bind(&bind("ram", 0, 0, 2 * MIB, MIB)).unwrap_err();
    assert_eq!(errno_of(&err), Errno::NOENT);
    assert!(err.message().unwrap().contains("vm-b/ram"), "{err}");
    assert_eq!(errno_of(&b.open(&name("ram")).unwrap_err()), Errno::NOENT);
    // Naming vm-a's file takes an operator.
    let vm_a_ram = FileRef::vm(VmSelector::Name(name("vm-a")), name("ram"));
    assert_eq!(errno_of(&b.open_in(&vm_a_ram).unwrap_err()), Errno::PERM);
    assert_eq!(errno_of(&b.destroy_in(&vm_a_ram).unwrap_err()), Errno::PERM);
    // vm-b makes its own "ram": another file.
    b.create(&name("ram"), MIB, MemoryKind::Memfd).unwrap();
    b.bind(&bind("ram", 0, 0, 0, MIB)).unwrap();
    let files = daemon.control().scoped_files().unwrap();
    let owners: Vec<_> = files
        .iter()
        .map(|f| (f.vm.as_ref().unwrap().name.as_str(), f.file.size))
        .collect();
    assert_eq!(owners, [("vm-a", 4 * MIB), ("vm-b", MIB)]);

    a.unbind(0).unwrap();
    assert!(
        file_status(&daemon, "ram").owner.is_some(),
        "one binding left"
    );
    a.unbind(1).unwrap();
    let files = daemon.control().scoped_files().unwrap();
    let a_ram = files
        .iter()
        .find(|f| f.vm.as_ref().unwrap().name.as_str() == "vm-a")
        .unwrap();
    assert!(a_ram.file.owner.is_none(), "last binding gone");
    // Destroying a bound file says what to do.
    let err = b.destroy(&name("ram")).unwrap_err();
    assert_eq!(errno_of(&err), Errno::BUSY);
    assert!(
        err.message().unwrap().contains("`gmemctl revoke vm-b`"),
        "{err}"
    );
}

#[test]
fn each_bad_bind_has_its_own_error_and_changes_nothing() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("ram"), 4 * MIB, MemoryKind::Memfd).unwrap();
    a.create(&name("other"), MIB, MemoryKind::Memfd).unwrap();
    a.bind(&bind("ram", 5, 0x100_0000, 0, MIB)).unwrap();
    let before = daemon.control().files().unwrap();

    let cases = [
        (
            "misaligned offset",
            bind("ram", 0, 0, 100, 4096),
            Errno::INVAL,
            "not aligned",
        ),
        (
            "misaligned size",
            bind("ram", 0, 0, MIB, 100),
            Errno::INVAL,
            "size",
        ),
        (
            "misaligned gpa",
            bind("ram", 0, 0x123, MIB, 4096),
            Errno::INVAL,
            "gpa",
        ),
        (
            "past the end",
            bind("ram", 0, 0, 3 * MIB, 2 * MIB),
            Errno::RANGE,
            "past the",
        ),
        (
            "offset overflow",
            bind("ram", 0, 0, u64::MAX - 4095, 8192),
            Errno::RANGE,
            "past the",
        ),
        (
            "file range overlap",
            bind("ram", 0, 0, MIB - 4096, 8192),
            Errno::BUSY,
            "overlaps the binding in slot 5",
        ),
        (
            "duplicate slot",
            bind("other", 5, 0, 0, 4096),
            Errno::EXIST,
            "slot 5 is already bound",
        ),
        (
            "guest range overlap",
            bind("other", 6, 0x100_0000 + 4096, 0, 4096),
            Errno::ADDRINUSE,
            "overlaps slot 5",
        ),
        (
            "gpa overflow",
            bind("other", 6, u64::MAX - 4095, 0, 8192),
            Errno::OVERFLOW,
            "overflows",
        ),
        (
            "empty",
            bind("other", 6, 0, 0, 0),
            Errno::INVAL,
            "at least one page",
        ),
        (
            "unknown file",
            bind("nope", 6, 0, 0, 4096),
            Errno::NOENT,
            "no memory file",
        ),
    ];
    for (what, req, errno, text) in cases {
        let err = a.bind(&req).unwrap_err();
        assert_eq!(errno_of(&err), errno, "{what}: {err}");
        assert!(err.message().unwrap().contains(text), "{what}: {err}");
        assert_eq!(
            daemon.control().files().unwrap(),
            before,
            "{what} changed the ledger"
        );
    }
    // Unbinding a slot that is not bound is an error too.
    assert_eq!(errno_of(&a.unbind(9).unwrap_err()), Errno::NOENT);
    assert_eq!(daemon.control().files().unwrap(), before);
}

#[test]
fn one_lease_per_vm() {
    let daemon = Daemon::start();
    let _first = daemon.lease(vm("vm-a"));
    let err = gmem_protocol::Client::connect(daemon.socket(), vm("vm-a")).unwrap_err();
    assert_eq!(errno_of(&err), Errno::BUSY);
    assert!(err.message().unwrap().contains("already has lease"));
}

#[test]
fn files_belong_to_the_vm_that_made_them_across_its_leases() {
    // Root as a plain client: operators (uid 4242 here) may destroy anything.
    let daemon = Daemon::start_with(&["--allow-uid", "0", "--admin-uid", "4242"]);
    {
        let mut a = daemon.lease(vm("vm-a"));
        a.create(&name("scratch"), MIB, MemoryKind::Memfd).unwrap();
        a.create(&name("bound"), MIB, MemoryKind::Memfd).unwrap();
    }
    wait_until(
        std::time::Duration::from_secs(10),
        "vm-a's lease to end",
        || daemon.control().leases().unwrap().is_empty().then_some(()),
    );
    // Another VM cannot even name vm-a's files...
    let mut b = daemon.lease(vm("vm-b"));
    let err = b.destroy(&name("scratch")).unwrap_err();
    assert_eq!(errno_of(&err), Errno::NOENT);
    let scratch = FileRef::vm(VmSelector::Name(name("vm-a")), name("scratch"));
    assert_eq!(errno_of(&b.destroy_in(&scratch).unwrap_err()), Errno::PERM);
    // ...vm-a, relaunched on a new lease, may.
    let mut a = daemon.lease(vm("vm-a"));
    a.destroy(&name("scratch")).unwrap();
    // Not while it is bound, though, and the refusal says how to proceed.
    a.bind(&bind("bound", 0, 0, 0, MIB)).unwrap();
    let err = a.destroy(&name("bound")).unwrap_err();
    assert_eq!(errno_of(&err), Errno::BUSY);
    let text = err.message().unwrap();
    assert!(text.contains("`gmemctl revoke vm-a`"), "{text}");
    a.unbind(0).unwrap();
    a.destroy(&name("bound")).unwrap();
    assert!(daemon.control().files().unwrap().is_empty());
    drop(b);
}
