"""Issue 9, as an operator: scoped names, TRANSFER and FORGET (§5.2, §6.5,
§7.3, §7.12, §7.13, §8, §9). Content never crosses VMs: a file transferred
into a VM is a fresh inode, so the fd its creator kept reads zeros and
nothing written through it reaches the VM."""

import errno
import mmap
import os

from .connection import Connection
from .expect import expect_error, lease_entry, scoped_files, wait_until
from .wire import (
    ALL_FEATURES, FEATURE_VM_SCOPE, OPEN, RAW_STATUS_QUERY, SECTION_SCOPED_FILES, STATUS,
    TRANSFER, name_field, scoped_name, uuid_from_name, uuid_text,
)

VM = "py-tenant"
MARKER = b"operator marker"
SIZE = 2 * 4096


def tenant_checks(path, ctl):
    print(f"VM_SCOPE (features {ctl.features:#x}):")
    assert ctl.features & FEATURE_VM_SCOPE, "daemon did not negotiate VM_SCOPE"
    without_feature(path)
    bad_scoped_names(ctl)
    transfer_in_and_forget(path, ctl)


def without_feature(path):
    """§5.3 step 8: every use of VM_SCOPE needs it negotiated; the 64-byte
    forms still work."""
    old = Connection(path)
    features, _ = old.hello_control(ALL_FEATURES & ~FEATURE_VM_SCOPE)
    assert features == ALL_FEATURES & ~FEATURE_VM_SCOPE, f"{features:#x}"
    expect_error("scoped OPEN without VM_SCOPE", errno.EOPNOTSUPP,
                 old.open_in, "py-any", uuid_from_name(VM))
    expect_error("scoped OPEN of the operators' namespace without VM_SCOPE", errno.EOPNOTSUPP,
                 old.open_in, "py-any")
    expect_error("scoped DESTROY without VM_SCOPE", errno.EOPNOTSUPP,
                 old.destroy_in, "py-any", bytes(16), VM)
    expect_error("TRANSFER without VM_SCOPE", errno.EOPNOTSUPP,
                 old.transfer, ("py-any",), ("py-any", bytes(16), VM))
    expect_error("FORGET without VM_SCOPE", errno.EOPNOTSUPP, old.forget, bytes(16), VM)
    expect_error("STATUS scoped files without VM_SCOPE", errno.EOPNOTSUPP,
                 old.status_page, SECTION_SCOPED_FILES, 0)
    expect_error("plain OPEN still works (no such file)", errno.ENOENT, old.open, "py-any")
    old.close()


def bad_scoped_names(ctl):
    """§7.3: a scoped name with both a UUID and a VM name is malformed;
    a payload of neither size is too."""
    both = uuid_from_name(VM) + name_field(VM) + name_field("py-any")
    expect_error("scoped OPEN with both uuid and vm_name", errno.EINVAL,
                 ctl.call, OPEN, both, (), 1)
    expect_error("OPEN with a 100-byte payload", errno.EINVAL, ctl.call, OPEN, bytes(100), (), 1)
    expect_error("TRANSFER with a 144-byte payload", errno.EINVAL,
                 ctl.call, TRANSFER, scoped_name("py-any"))
    expect_error("FORGET of an unknown VM", errno.ENOENT, ctl.forget, uuid_from_name("py-nobody"))
    expect_error("scoped OPEN in an unknown VM", errno.ENOENT,
                 ctl.open_in, "py-any", bytes(16), "py-nobody")
    expect_error("TRANSFER into an unknown VM", errno.ENOENT,
                 ctl.transfer, ("py-any",), ("py-any", bytes(16), "py-nobody"))
    # Valid frames, to make sure the sizes above were refused for their size.
    ctl.call(STATUS, RAW_STATUS_QUERY.pack(SECTION_SCOPED_FILES, 0))


def transfer_in_and_forget(path, ctl):
    uuid = uuid_from_name(VM)
    # The VM is known once it has had a lease (§6.5): open one first.
    vm = Connection(path)
    vm.hello_vm(VM, uuid)
    lease = vm.lease

    fd_old, info = ctl.create("py-pool-0", SIZE)
    assert info["created"]
    os.pwrite(fd_old, MARKER, 4096)
    expect_error("the VM's lease OPENs an operators' file by plain name", errno.ENOENT,
                 vm.open, "py-pool-0")
    expect_error("the VM's lease BINDs an operators' file", errno.ENOENT,
                 vm.bind, 0, 0, "py-pool-0", 0, 4096)

    info = ctl.transfer(("py-pool-0",), ("py-ram", bytes(16), VM))
    print(f"TRANSFER operators' py-pool-0 -> {VM}/py-ram: {info}")
    assert (info["size"], info["page_size"], info["kind"]) == (SIZE, 4096, "memfd"), info
    expect_error("OPEN the transferred file under its old name", errno.ENOENT,
                 ctl.open, "py-pool-0")
    expect_error("TRANSFER it again from its old name", errno.ENOENT,
                 ctl.transfer, ("py-pool-0",), ("py-ram2", uuid))

    fd_new, info = vm.open("py-ram")
    assert info["size"] == SIZE and not info["created"], info
    assert os.pread(fd_new, len(MARKER), 4096) == MARKER, "the content did not arrive"
    assert os.fstat(fd_new).st_ino != os.fstat(fd_old).st_ino, "TRANSFER kept the inode"
    print("  the VM's lease OPENs py-ram: a fresh inode with the content: ok")

    assert os.pread(fd_old, SIZE, 0) == bytes(SIZE), "the old fd still reads content"
    os.pwrite(fd_old, b"spy write", 0)
    with mmap.mmap(fd_old, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
        m[4096:4096 + 9] = b"spy mmap!"
    assert os.pread(fd_new, 9, 0) == bytes(9), "a write through the old fd reached the VM"
    assert os.pread(fd_new, len(MARKER), 4096) == MARKER, "a mapping of the old fd reached the VM"
    fd_again, _ = ctl.open_in("py-ram", uuid)
    assert os.pread(fd_again, 9, 0) == bytes(9) and os.fstat(fd_again).st_ino == os.fstat(fd_new).st_ino
    os.close(fd_again)
    print("  the fd kept from CREATE reads zeros; its writes never show in the VM's file: ok")

    entry = scoped_files(ctl, "py-ram")
    assert len(entry) == 1 and entry[0]["vm"] == {"uuid": uuid_text(uuid), "name": VM}, entry
    assert entry[0]["idle_secs"] == 0, entry
    assert lease_entry(ctl, lease)["files"] == 1
    print(f"  STATUS scoped files: py-ram in {VM}'s namespace, idle 0 while leased: ok")

    transfer_errors(ctl, vm, uuid)
    reclaim(ctl, vm, uuid)

    expect_error("FORGET a VM that has a lease", errno.EBUSY, ctl.forget, uuid)
    vm.close()
    wait_until(f"{VM}'s lease ends after its connection closed",
               lambda: lease_entry(ctl, lease) is None)
    entry = scoped_files(ctl, "py-ram")
    assert len(entry) == 1 and entry[0]["vm"]["name"] == VM, entry
    wait_until("the orphan's idle_secs counts", lambda: scoped_files(ctl, "py-ram")[0]["idle_secs"] >= 1)
    print("  after the lease: py-ram stays, an orphan whose idle_secs counts: ok")

    ctl.forget(bytes(16), VM)
    print(f"FORGET {VM}: ok")
    assert scoped_files(ctl, "py-ram") == [], "the VM's file outlived FORGET"
    expect_error("scoped OPEN in a forgotten VM", errno.ENOENT, ctl.open_in, "py-ram", uuid)
    expect_error("FORGET it again", errno.ENOENT, ctl.forget, uuid)
    assert os.pread(fd_new, SIZE, 0) == bytes(SIZE), "FORGET left the content in the file"
    print("  its file is gone and its content punched: ok")
    # The name is free for any UUID now (§6.5).
    again = Connection(path)
    again.hello_vm(VM, uuid_from_name("py-tenant-2"))
    again.close()
    print("  the forgotten name is free for another UUID: ok")
    for fd in (fd_old, fd_new):
        os.close(fd)


def transfer_errors(ctl, vm, uuid):
    """§7.12 refusals; each changes nothing."""
    fd, _ = ctl.create("py-pool-1", SIZE)
    os.close(fd)
    expect_error("TRANSFER onto an existing name", errno.EEXIST,
                 ctl.transfer, ("py-pool-1",), ("py-ram", uuid))
    vm.bind(5, 0, "py-ram", 0, SIZE)
    expect_error("TRANSFER a bound file", errno.EBUSY,
                 ctl.transfer, ("py-ram", uuid), ("py-back",))
    vm.unbind(5)
    ctl.destroy("py-pool-1")


def reclaim(ctl, vm, uuid):
    """§7.12 the other way: an operator takes a VM's own file into the
    operators' namespace; the VM's fd of it reads zeros from then on."""
    fd_vm, _ = vm.create("py-own", SIZE)
    os.pwrite(fd_vm, b"guest data", 0)
    ctl.transfer(("py-own", bytes(16), VM), ("py-reclaimed",))
    assert os.pread(fd_vm, 10, 0) == bytes(10), "the VM's fd still reads the reclaimed file"
    expect_error("the VM OPENs its transferred file", errno.ENOENT, vm.open, "py-own")
    fd, _ = ctl.open("py-reclaimed")
    assert os.pread(fd, 10, 0) == b"guest data"
    print("  TRANSFER of a VM's file to the operators: content moves, the VM's fd reads zeros: ok")
    os.close(fd)
    os.close(fd_vm)
    ctl.destroy("py-reclaimed")
