"""guest_memfd deposits (§6.4, §7.6, §7.9): they stay with the lease that
deposited them. Skipped when /dev/kvm cannot make a guest_memfd."""

import errno
import fcntl
import os
import struct
import time

from .connection import Connection
from .expect import expect_error, file_names
from .wire import KIND_GUEST_MEMFD, uuid_from_name

KVM_CREATE_VM = 0xAE01
KVM_CREATE_GUEST_MEMFD = 0xC040AED4  # _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)


def make_guest_memfd(size):
    """(vm fd, guest_memfd) from a fresh KVM VM, or None without KVM support."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        try:
            gmem = fcntl.ioctl(vm, KVM_CREATE_GUEST_MEMFD, bytearray(struct.pack("<QQ6Q", size, 0, *[0] * 6)))
        except OSError:
            os.close(vm)
            return None
        return vm, gmem
    except OSError:
        return None
    finally:
        os.close(kvm)


def guest_memfd_checks(path, ctl):
    size = 2 << 20
    made = make_guest_memfd(size)
    if made is None:
        print("(no usable /dev/kvm guest_memfd here; skipping the guest_memfd checks)")
        return
    vm_fd, gmem = made
    vm = Connection(path)
    vm.hello_vm("py-gm", uuid_from_name("py-gm"))
    expect_error("DEPOSIT a guest_memfd as memfd", errno.EINVAL, vm.deposit, "py-gm-ram", gmem)
    info = vm.deposit("py-gm-ram", gmem, KIND_GUEST_MEMFD)
    print(f"DEPOSIT guest_memfd py-gm-ram from a VM lease: {info}")
    assert info == {"size": size, "page_size": 4096, "kind": "guest_memfd", "created": True}
    expect_error("OPEN a guest_memfd", errno.EPERM, ctl.open_in, "py-gm-ram",
                 uuid_from_name("py-gm"))
    expect_error("TRANSFER a guest_memfd", errno.EPERM, ctl.transfer,
                 ("py-gm-ram", uuid_from_name("py-gm")), ("py-gm-moved",))
    vm.bind(0, 0, "py-gm-ram", 0, size)
    report = ctl.revoke(uuid_from_name("py-gm"))
    print(f"  REVOKE of its VM: {report}")
    # The guest_memfd went with the lease: neither scrubbed nor counted (§7.9).
    assert report == {"leases": 1, "bindings": 1, "scrubbed": 0}, report
    assert "py-gm-ram" not in file_names(ctl)
    print("  guest_memfd closed and forgotten with the lease: ok")
    vm.close()
    # Lease end without REVOKE: an unbound guest_memfd is dropped too.
    vm = Connection(path)
    vm.hello_vm("py-gm", uuid_from_name("py-gm"))
    vm.deposit("py-gm-ram2", gmem, KIND_GUEST_MEMFD)
    vm.close()
    for _ in range(100):
        if "py-gm-ram2" not in file_names(ctl):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("guest_memfd outlived its lease")
    print("  unbound guest_memfd dropped when its lease closed: ok")
    os.close(gmem)
    os.close(vm_fd)
