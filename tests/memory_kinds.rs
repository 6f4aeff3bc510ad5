//! Each memory kind through the real daemon: hugetlb (with pages the test
//! reserves, and the clear refusal without them), memfd_secret, and binding
//! alignment following the file's page size.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::fd::AsRawFd;

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, MemoryKind};
use gmem_tests::{e2e, hugepages, name, vm, Daemon};
use rustix::io::Errno;

#[test]
fn hugetlb_files_use_their_page_size_or_say_why_not() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    // Root may reserve pages; the CI runs as root. `None` only where the
    // host cannot and GMEM_E2E is not "require" (take says why).
    let Some(_pages) = hugepages::Reservation::take(2) else {
        return;
    };
    // More than the pool has: a clear refusal that says what to raise.
    let free = hugepages::free();
    let err = a
        .create(
            &name("too-big"),
            (free + 1) * (2 << 20),
            MemoryKind::Hugetlb2M,
        )
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::NOMEM.raw_os_error()));
    assert!(err.message().unwrap().contains("free 2048 KiB hugepages"));
    assert!(err.message().unwrap().contains("nr_hugepages"));

    let (fd, info) = a
        .create(&name("huge"), 4 << 20, MemoryKind::Hugetlb2M)
        .unwrap();
    assert_eq!((info.size, info.page_size), (4 << 20, 2 << 20));
    assert_eq!(hugepages::free(), free - 2, "both pages allocated up front");
    assert_eq!(
        rustix::fs::ftruncate(&fd, 2 << 20),
        Err(Errno::PERM),
        "sealed"
    );
    let bind = |offset, size| BindRequest::new(0, GuestAddress(0), name("huge"), offset, size);
    let err = a.bind(&bind(4096, 2 << 20)).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::INVAL.raw_os_error()), "{err}");
    assert!(
        err.message().unwrap().contains("2097152-byte page size"),
        "{err}"
    );
    a.bind(&bind(2 << 20, 2 << 20)).unwrap();
    let files = daemon.control().files().unwrap();
    assert_eq!(files[0].kind, MemoryKind::Hugetlb2M);
    a.unbind(0).unwrap();
    a.destroy(&name("huge")).unwrap();
}

#[test]
fn secret_memory_is_created_when_the_kernel_allows_it() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    let made = a.create(&name("secret"), 2 << 20, MemoryKind::Secret);
    // Asked of the kernel directly: gmemd failing to make a secret file on
    // a host that has memfd_secret is a failure, never a skip.
    if !e2e::memfd_secret() {
        // Truly absent and not required: gmemd's refusal is the one
        // PROTOCOL.md §7.2 names.
        let err = made.expect_err("memfd_secret is absent, yet gmemd made a secret file");
        assert_eq!(err.errno(), Some(Errno::NOSYS.raw_os_error()), "{err}");
        assert!(err.message().unwrap().contains("memfd_secret"), "{err}");
        return;
    }
    let (fd, info) = made.expect("memfd_secret works on this host");
    assert_eq!(
        (info.kind, info.size, info.page_size),
        (MemoryKind::Secret, 2 << 20, 4096)
    );
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    assert!(target.to_string_lossy().contains("secretmem"), "{target:?}");
    // Its size was set once, by gmemd: the kernel refuses another.
    assert_eq!(
        rustix::fs::ftruncate(&fd, 4 << 20),
        Err(Errno::INVAL),
        "size is fixed"
    );
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 2 << 20);
}
