//! DEVICE and the memory tables devices report: who gets a device, which
//! regions a device may map, and how a table confirms, corrects and
//! records the VM's bindings.

use std::sync::mpsc;

use gmem_protocol::wire::{DeviceReply, DeviceRequest, StatusPage};

use super::*;
use crate::vhost::{DeviceCall, MappedRegion};

fn device(disk: Option<&str>) -> RequestBody {
    RequestBody::Device(DeviceRequest {
        queues: 1,
        disk: disk.map(name),
    })
}

fn service_with_devices(dir: &std::path::Path) -> Service {
    let mut svc = service();
    svc.set_device_dir(dir.to_owned());
    svc
}

fn device_reply(reply: &Reply) -> DeviceReply {
    DeviceReply::decode(&reply.body).unwrap()
}

/// The region a memory file `fd` would be at `gpa`.
fn region(fd: &OwnedFd, gpa: u64, offset: u64, size: u64) -> MappedRegion {
    let st = rustix::fs::fstat(fd).unwrap();
    MappedRegion {
        guest_phys_addr: gpa,
        memory_size: size,
        mmap_offset: offset,
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

fn judge(svc: &mut Service, device: u32, region: MappedRegion) -> Result<(), String> {
    let (reply, rx) = mpsc::sync_channel(1);
    svc.device_call(DeviceCall::Judge {
        device,
        region,
        reply,
    });
    rx.recv().unwrap()
}

fn connect(svc: &mut Service, device: u32, uid: u32) -> Result<crate::vhost::DeviceGrant, String> {
    let (reply, rx) = mpsc::sync_channel(1);
    svc.device_call(DeviceCall::Connect {
        device,
        conn: 1,
        peer: Peer { pid: 0, uid },
        principal: principal(uid),
        reply,
    });
    rx.recv().unwrap()
}

fn table(svc: &mut Service, device: u32, regions: Vec<MappedRegion>) {
    svc.device_call(DeviceCall::Table {
        device,
        conn: 1,
        table: regions,
    });
}

/// (slot, gpa, offset, size, confirmed) of file `file`'s bindings.
fn bindings_of(svc: &mut Service, s: &mut Session, file: &str) -> Vec<(u32, u64, u64, u64, bool)> {
    let reply = status(svc, s, StatusSection::Files).unwrap();
    let page: StatusPage<FileStatus> = FileStatus::decode_page(&reply.body).unwrap();
    page.entries
        .iter()
        .find(|f| f.name.as_str() == file)
        .map(|f| {
            f.bindings
                .iter()
                .map(|b| (b.slot, b.gpa.0, b.offset, b.size, b.confirmed))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_vm_gets_one_device_per_disk_and_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let mut c = control(&mut svc, 1, ALICE);
    assert_eq!(errno_of(call(&mut svc, &mut c, device(None))), Errno::PERM);
    let mut a = vm_session(&mut svc, 2, "vm-a", ALICE);
    assert_eq!(
        errno_of(call(&mut svc, &mut a, device(Some("disk")))),
        Errno::NOENT
    );
    call_fd(&mut svc, &mut a, create_named("disk", MIB));
    let first = device_reply(&call(&mut svc, &mut a, device(Some("disk"))).unwrap());
    assert_eq!(first.capacity, MIB);
    assert_eq!(
        first.path,
        dir.path()
            .join(format!("d{}.sock", first.id))
            .to_str()
            .unwrap()
    );
    let again = device_reply(&call(&mut svc, &mut a, device(Some("disk"))).unwrap());
    assert_eq!(again, first, "the same disk, the same device");
    let bare = device_reply(&call(&mut svc, &mut a, device(None)).unwrap());
    assert_ne!(bare.id, first.id);
    assert_eq!(bare.capacity, 0);
    assert_eq!(svc.devices().specs().count(), 2, "two devices to serve");
    // Another VM's disk of the same name is its own.
    let mut b = vm_session(&mut svc, 3, "vm-b", BOB);
    assert_eq!(
        errno_of(call(&mut svc, &mut b, device(Some("disk")))),
        Errno::NOENT
    );
    // Without a device directory there are no devices.
    let mut plain = service();
    let mut p = vm_session(&mut plain, 4, "vm-p", ALICE);
    assert_eq!(
        errno_of(call(&mut plain, &mut p, device(None))),
        Errno::INVAL
    );
}

#[test]
fn a_vm_has_at_most_eight_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with(|c| c.limits.max_files_per_vm = 16);
    svc.set_device_dir(dir.path().to_owned());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    for i in 0..8 {
        call_fd(&mut svc, &mut a, create_named(&format!("d{i}"), 4096));
        call(&mut svc, &mut a, device(Some(&format!("d{i}")))).unwrap();
    }
    call_fd(&mut svc, &mut a, create_named("d8", 4096));
    let (errno, text) = refused(call(&mut svc, &mut a, device(Some("d8"))));
    assert_eq!(errno, Errno::NOSPC, "{text}");
}

#[test]
fn only_the_vms_principal_or_an_operator_may_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    call_fd(&mut svc, &mut a, create_named("disk", MIB));
    let id = device_reply(&call(&mut svc, &mut a, device(Some("disk"))).unwrap()).id;
    let grant = connect(&mut svc, id, ALICE).unwrap();
    assert!(grant.disk.is_some());
    assert!(connect(&mut svc, id, ROOT).is_ok(), "an operator");
    let err = connect(&mut svc, id, BOB).unwrap_err();
    assert!(err.contains("not VM vm-a"), "{err}");
    assert!(connect(&mut svc, id + 7, ALICE).is_err(), "no such device");
}

#[test]
fn only_the_vms_own_files_inside_their_size_may_be_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let ram = call_fd(&mut svc, &mut a, create_named("ram", 4 * MIB));
    let id = device_reply(&call(&mut svc, &mut a, device(None)).unwrap()).id;
    let mut b = vm_session(&mut svc, 2, "vm-b", BOB);
    let other = call_fd(&mut svc, &mut b, create_named("ram", 4 * MIB));

    assert_eq!(judge(&mut svc, id, region(&ram, 0, 0, 4 * MIB)), Ok(()));
    assert_eq!(
        judge(&mut svc, id, region(&ram, 0, 2 * MIB, 2 * MIB)),
        Ok(())
    );
    let past = judge(&mut svc, id, region(&ram, 0, 2 * MIB, 4 * MIB)).unwrap_err();
    assert!(past.contains("past its end"), "{past}");
    let wrap = judge(&mut svc, id, region(&ram, 0, u64::MAX, 4096)).unwrap_err();
    assert!(wrap.contains("past its end"), "{wrap}");
    let foreign = judge(&mut svc, id, region(&other, 0, 0, MIB)).unwrap_err();
    assert!(
        foreign.contains("not a file of the device's VM"),
        "{foreign}"
    );
    let stranger = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&stranger, 4 * MIB).unwrap();
    let err = judge(&mut svc, id, region(&stranger, 0, 0, MIB)).unwrap_err();
    assert!(err.contains("not a gmemd memory file"), "{err}");
}

#[test]
fn the_memory_table_confirms_corrects_and_records_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with(|c| c.limits.max_files_per_vm = 8);
    svc.set_device_dir(dir.path().to_owned());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let ram = call_fd(&mut svc, &mut a, create_named("ram", 4 * MIB));
    let id = device_reply(&call(&mut svc, &mut a, device(None)).unwrap()).id;
    // The launcher recorded [0, 2M) at GPA 0 and [2M, 4M) at GPA 1G...
    let bind = |slot, gpa, offset| {
        RequestBody::Bind(BindRequest::new(
            slot,
            GuestAddress(gpa),
            name("ram"),
            offset,
            2 * MIB,
        ))
    };
    call(&mut svc, &mut a, bind(0, 0, 0)).unwrap();
    call(&mut svc, &mut a, bind(1, 1 << 30, 2 * MIB)).unwrap();
    assert!(
        bindings_of(&mut svc, &mut a, "ram").iter().all(|b| !b.4),
        "none confirmed yet"
    );
    // ... QEMU has the second at 4G, and only half of the first.
    table(
        &mut svc,
        id,
        vec![
            region(&ram, 0, 0, 2 * MIB),
            region(&ram, 4 << 30, 2 * MIB, 2 * MIB),
        ],
    );
    assert_eq!(
        bindings_of(&mut svc, &mut a, "ram"),
        [
            (0, 0, 0, 2 * MIB, true),
            (1, 4 << 30, 2 * MIB, 2 * MIB, true)
        ],
        "confirmed, and moved to QEMU's GPA in the same slot"
    );
    // A region nobody bound is recorded in the first free slot from 0x8000.
    let extra = call_fd(&mut svc, &mut a, create_named("extra", MIB));
    table(
        &mut svc,
        id,
        vec![
            region(&ram, 0, 0, 2 * MIB),
            region(&ram, 4 << 30, 2 * MIB, 2 * MIB),
            region(&extra, 8 << 30, 0, MIB),
        ],
    );
    assert_eq!(
        bindings_of(&mut svc, &mut a, "extra"),
        [(0x8000, 8 << 30, 0, MIB, true)]
    );
    // QEMU removes a region it reported (a DIMM unplugged): what was
    // recorded from it goes; what the launcher bound stays.
    let other = call_fd(&mut svc, &mut a, create_named("other", MIB));
    let mut tab = vec![
        region(&ram, 0, 0, 2 * MIB),
        region(&ram, 4 << 30, 2 * MIB, 2 * MIB),
        region(&extra, 8 << 30, 0, MIB),
    ];
    let without_other = tab.clone();
    tab.push(region(&other, 9 << 30, 0, MIB));
    table(&mut svc, id, tab);
    assert_eq!(
        bindings_of(&mut svc, &mut a, "other"),
        [(0x8001, 9 << 30, 0, MIB, true)]
    );
    table(&mut svc, id, without_other);
    assert_eq!(
        bindings_of(&mut svc, &mut a, "other"),
        [],
        "unbound with its region"
    );
    assert_eq!(bindings_of(&mut svc, &mut a, "ram").len(), 2);
    // The launcher's BIND of that very range takes it into its own slot.
    let take = BindRequest::new(7, GuestAddress(8 << 30), name("extra"), 0, MIB);
    call(&mut svc, &mut a, RequestBody::Bind(take)).unwrap();
    assert_eq!(
        bindings_of(&mut svc, &mut a, "extra"),
        [(7, 8 << 30, 0, MIB, true)]
    );
    // The connection ends: nothing is confirmed, the bindings stay.
    svc.device_call(DeviceCall::Gone {
        device: id,
        conn: 1,
    });
    assert_eq!(
        bindings_of(&mut svc, &mut a, "ram"),
        [
            (0, 0, 0, 2 * MIB, false),
            (1, 4 << 30, 2 * MIB, 2 * MIB, false)
        ]
    );
}

#[test]
fn devices_survive_a_restart_and_go_with_a_forgotten_vm() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    call_fd(&mut svc, &mut a, create_named("disk", MIB));
    let id = device_reply(&call(&mut svc, &mut a, device(Some("disk"))).unwrap()).id;
    let records: Vec<_> = svc.devices().records().collect();
    let mut restored = super::super::devices::Devices::default();
    let recs: Vec<crate::journal::record::DeviceRec> = records
        .into_iter()
        .map(|r| match r {
            crate::journal::record::Record::Device(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut notes = Vec::new();
    restored.restore(recs.iter(), &mut notes);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        restored.specs().cloned().collect::<Vec<_>>(),
        svc.devices().specs().cloned().collect::<Vec<_>>()
    );
    let mut op = control(&mut svc, 2, ROOT);
    svc.close_session(&a, "test");
    call(&mut svc, &mut op, forget("vm-a")).unwrap();
    assert!(
        svc.devices().specs().all(|s| s.id != id),
        "the forgotten VM's device is gone"
    );
}

#[test]
fn a_device_is_served_before_its_reply_and_a_socket_failure_refuses_it() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let started = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(Mutex::new(false));
    let (s, f) = (Arc::clone(&started), Arc::clone(&fail));
    svc.set_device_starter(crate::service::DeviceStarter(Box::new(
        move |spec, path| {
            if *f.lock().unwrap() {
                return Err(std::io::Error::other("no socket"));
            }
            s.lock().unwrap().push((spec.id, path.to_owned()));
            Ok(())
        },
    )));
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let reply = device_reply(&call(&mut svc, &mut a, device(None)).unwrap());
    assert_eq!(
        *started.lock().unwrap(),
        [(reply.id, std::path::PathBuf::from(&reply.path))]
    );
    call(&mut svc, &mut a, device(None)).unwrap();
    assert_eq!(
        started.lock().unwrap().len(),
        1,
        "the same device is not served twice"
    );
    *fail.lock().unwrap() = true;
    call_fd(&mut svc, &mut a, create_named("disk", MIB));
    let (errno, text) = refused(call(&mut svc, &mut a, device(Some("disk"))));
    assert_eq!(errno, Errno::IO, "{text}");
    assert_eq!(
        svc.devices().specs().count(),
        1,
        "no device without its socket"
    );
}

#[test]
fn a_frontend_that_leaves_leaves_the_bindings_where_the_others_map_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service_with_devices(dir.path());
    let mut a = vm_session(&mut svc, 1, "vm-a", ALICE);
    let ram = call_fd(&mut svc, &mut a, create_named("ram", 2 * MIB));
    let id = device_reply(&call(&mut svc, &mut a, device(None)).unwrap()).id;
    call(
        &mut svc,
        &mut a,
        RequestBody::Bind(BindRequest::new(
            0,
            GuestAddress(0),
            name("ram"),
            0,
            2 * MIB,
        )),
    )
    .unwrap();
    table(&mut svc, id, vec![region(&ram, 0, 0, 2 * MIB)]);
    // A second connection maps the range elsewhere, then leaves.
    svc.device_call(DeviceCall::Table {
        device: id,
        conn: 2,
        table: vec![region(&ram, 1 << 40, 0, 2 * MIB)],
    });
    assert_eq!(bindings_of(&mut svc, &mut a, "ram")[0].1, 1 << 40);
    svc.device_call(DeviceCall::Gone {
        device: id,
        conn: 2,
    });
    assert_eq!(
        bindings_of(&mut svc, &mut a, "ram"),
        [(0, 0, 0, 2 * MIB, true)],
        "back where QEMU, still connected, maps it"
    );
}
