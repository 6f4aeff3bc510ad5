//! DESIGN invariants 1 and 2 over the real socket: ownership follows the
//! first BIND and ends with the last UNBIND; every validation refuses with its
//! own error and changes nothing.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind};
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
fn first_bind_owns_second_vm_refused_last_unbind_frees() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let mut b = daemon.lease(vm("vm-b"));
    a.create(&name("ram"), 4 * MIB, MemoryKind::Memfd).unwrap();

    a.bind(&bind("ram", 0, 0, 0, MIB)).unwrap();
    a.bind(&bind("ram", 1, 0x10_0000, MIB, MIB)).unwrap();
    let owner = file_status(&daemon, "ram").owner.expect("owned");
    assert_eq!(owner.vm.name.as_str(), "vm-a");
    assert_eq!(Some(owner.lease), a.lease());

    let err = b.bind(&bind("ram", 0, 0, 2 * MIB, MIB)).unwrap_err();
    assert_eq!(errno_of(&err), Errno::BUSY);
    let message = err.message().unwrap();
    assert!(message.contains("owned by VM vm-a"), "{message}");
    // The text says what a user can do: stop that VM, or revoke it.
    assert!(message.contains("`gmemctl revoke vm-a`"), "{message}");
    assert!(!message.contains("unbind it there"), "{message}");
    // Opening it is refused too: an fd is as good as a binding.
    assert_eq!(errno_of(&b.open(&name("ram")).unwrap_err()), Errno::BUSY);

    a.unbind(0).unwrap();
    assert!(
        file_status(&daemon, "ram").owner.is_some(),
        "one binding left"
    );
    a.unbind(1).unwrap();
    assert!(
        file_status(&daemon, "ram").owner.is_none(),
        "last binding gone"
    );

    b.bind(&bind("ram", 0, 0, 2 * MIB, MIB)).unwrap();
    let owner = file_status(&daemon, "ram").owner.expect("owned again");
    assert_eq!(owner.vm.name.as_str(), "vm-b");
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
    // Another VM may not destroy vm-a's files...
    let mut b = daemon.lease(vm("vm-b"));
    let err = b.destroy(&name("scratch")).unwrap_err();
    assert_eq!(errno_of(&err), Errno::PERM);
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
