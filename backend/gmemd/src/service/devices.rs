//! DEVICE and what a VM's vhost-user devices report: the devices a VM
//! has (journaled, so their sockets come back after a gmemd restart and
//! QEMU reconnects), who may connect to one, which memory regions a
//! device may map, and the memory tables QEMU sent, which confirm the
//! VM's bindings or record the ones nobody reported (PROTOCOL.md §7.15).
//!
//! The device threads never touch the service: they ask through
//! [`crate::vhost::DeviceCall`], answered here on the event loop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    BindRequest, DeviceReply, DeviceRequest, GuestAddress, LeaseId, MemoryKind, Name, Request,
    Uuid, MAX_DEVICE_PATH,
};
use log::{debug, info, warn};

use super::{Done, Service, ServiceError, ServiceResult, Session};
use crate::journal::record::{DeviceRec, Record};
use crate::ledger::{Binding, FileKey};
use crate::vhost::{DeviceCall, DeviceGrant, DeviceSpec, MappedRegion};

/// Devices one VM may have.
pub const MAX_DEVICES_PER_VM: usize = 8;

/// A disk's sector: its size must be a multiple.
const SECTOR: u64 = 512;

/// First slot a binding recorded from a memory table gets (above what
/// launchers use, so theirs never collide with it).
pub const RECORDED_SLOT_BASE: u32 = 0x8000;

/// Starts serving a device's socket at a path: the event loop's part, so
/// the service itself holds no sockets. Called before DEVICE's reply, so
/// the socket is there when the client reads the reply.
pub struct DeviceStarter(pub Box<StartFn>);

/// What a [`DeviceStarter`] runs.
pub type StartFn = dyn FnMut(&DeviceSpec, &Path) -> std::io::Result<()>;

impl std::fmt::Debug for DeviceStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceStarter")
    }
}

/// The VMs' devices and the memory tables their connections reported.
#[derive(Debug, Default)]
pub struct Devices {
    /// Where device sockets live; `None`: DEVICE is refused.
    dir: Option<PathBuf>,
    specs: BTreeMap<u32, DeviceSpec>,
    next_id: u32,
    /// The current table of each live device connection, by (device,
    /// connection), with the file each region maps.
    tables: HashMap<(u32, u64), Vec<(FileKey, MappedRegion)>>,
    /// Serves a new device's socket.
    starter: Option<DeviceStarter>,
}

impl Devices {
    /// Device sockets go in `dir`.
    pub fn set_dir(&mut self, dir: PathBuf) {
        self.dir = Some(dir);
    }

    /// Every device, for the event loop to serve.
    pub fn specs(&self) -> impl Iterator<Item = &DeviceSpec> {
        self.specs.values()
    }

    /// The socket of device `id`.
    pub fn path(&self, id: u32) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("d{id}.sock")))
    }

    /// Brings back the journaled devices.
    pub(super) fn restore<'a>(
        &mut self,
        recs: impl Iterator<Item = &'a DeviceRec>,
        notes: &mut Vec<String>,
    ) {
        for rec in recs {
            let disk = match rec.disk.as_deref().map(Name::new).transpose() {
                Ok(disk) => disk,
                Err(e) => {
                    notes.push(format!(
                        "device d{} has a bad disk name ({e}); left out",
                        rec.id
                    ));
                    continue;
                }
            };
            self.next_id = self.next_id.max(rec.id + 1);
            self.specs.insert(
                rec.id,
                DeviceSpec {
                    id: rec.id,
                    vm: Uuid(rec.vm),
                    disk,
                    queues: rec.queues,
                },
            );
        }
    }

    /// The records of every device (a snapshot).
    pub(super) fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.specs.values().map(|s| Record::Device(device_rec(s)))
    }

    /// Whether some live table maps `binding` of file `key` exactly.
    pub(super) fn confirms(&self, key: &FileKey, binding: &Binding) -> bool {
        self.tables.values().flatten().any(|(k, r)| {
            k == key
                && r.guest_phys_addr == binding.gpa.0
                && r.mmap_offset == binding.offset
                && r.memory_size == binding.size
        })
    }
}

fn device_rec(s: &DeviceSpec) -> DeviceRec {
    DeviceRec {
        id: s.id,
        vm: s.vm.0,
        disk: s.disk.as_ref().map(|n| n.as_str().to_owned()),
        queues: s.queues,
    }
}

impl Service {
    /// DEVICE: a vhost-user-blk device for the lease's VM, with `disk`
    /// (a memfd of its namespace) or none. Asking again for the same disk
    /// gives the same device.
    pub(super) fn device(&mut self, session: &Session, req: &DeviceRequest) -> ServiceResult<Done> {
        let lease = Self::require_lease(session, Request::Device)?;
        let vm = self.ledger.lease(lease)?.vm.clone();
        let capacity = match &req.disk {
            None => 0,
            Some(name) => {
                let key = FileKey::vm(vm.uuid, name.clone());
                let file = self.ledger.file(&key)?;
                if file.spec.kind != MemoryKind::Memfd {
                    return Err(ServiceError::BadDevice(format!(
                        "disk {name} is a {} file; a disk must be a memfd",
                        file.spec.kind
                    )));
                }
                if file.spec.size % SECTOR != 0 {
                    return Err(ServiceError::BadDevice(format!(
                        "disk {name} is {} bytes, not a multiple of {SECTOR}",
                        file.spec.size
                    )));
                }
                file.spec.size
            }
        };
        let existing = self
            .devices
            .specs
            .values()
            .find(|s| s.vm == vm.uuid && s.disk == req.disk)
            .cloned();
        let (spec, new) = match existing {
            Some(spec) => (spec, false),
            None => {
                let count = self
                    .devices
                    .specs
                    .values()
                    .filter(|s| s.vm == vm.uuid)
                    .count();
                if count >= MAX_DEVICES_PER_VM {
                    return Err(ServiceError::TooManyDevices {
                        vm: vm.name.clone(),
                        max: MAX_DEVICES_PER_VM,
                    });
                }
                let spec = DeviceSpec {
                    id: self.devices.next_id,
                    vm: vm.uuid,
                    disk: req.disk.clone(),
                    queues: req.queues,
                };
                (spec, true)
            }
        };
        let path = self.devices.path(spec.id).ok_or_else(|| {
            ServiceError::BadDevice("gmemd serves no devices (no state directory)".to_owned())
        })?;
        let path = path
            .to_str()
            .filter(|p| p.len() <= MAX_DEVICE_PATH.min(107))
            .ok_or_else(|| {
                ServiceError::BadDevice(format!(
                    "device socket path {} is too long for a socket",
                    path.display()
                ))
            })?
            .to_owned();
        if new {
            if let Some(starter) = self.devices.starter.as_mut() {
                (starter.0)(&spec, Path::new(&path)).map_err(|source| {
                    ServiceError::DeviceSocket {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            self.devices.next_id += 1;
            self.devices.specs.insert(spec.id, spec.clone());
            self.journal_record(Record::Device(device_rec(&spec)));
            info!(
                "device d{} for VM {}: disk {}, {} queue(s), on {path}",
                spec.id,
                vm,
                spec.disk.as_ref().map_or("none", Name::as_str),
                spec.queues
            );
        }
        let reply = DeviceReply {
            id: spec.id,
            capacity,
            path,
        };
        Ok(Response::ok(reply.encode()).into())
    }

    /// Forgets the devices of VM `uuid` (it was forgotten).
    pub(super) fn drop_devices_of(&mut self, uuid: Uuid) -> Vec<u32> {
        let gone: Vec<u32> = self
            .devices
            .specs
            .values()
            .filter(|s| s.vm == uuid)
            .map(|s| s.id)
            .collect();
        for id in &gone {
            self.devices.specs.remove(id);
            self.devices.tables.retain(|(d, _), _| d != id);
            self.journal_record(Record::DeviceGone { id: *id });
        }
        gone
    }

    /// The devices to serve.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Serves each new device's socket with `starter` from now on.
    pub fn set_device_starter(&mut self, starter: DeviceStarter) {
        self.devices.starter = Some(starter);
    }

    /// Device sockets go in `dir`.
    pub fn set_device_dir(&mut self, dir: PathBuf) {
        self.devices.set_dir(dir);
    }

    /// Answers what a device thread asks.
    pub fn device_call(&mut self, call: DeviceCall) {
        match call {
            DeviceCall::Connect {
                device,
                conn,
                peer,
                principal,
                reply,
            } => {
                let answer = self.device_connect(device, conn, peer, &principal);
                // The thread may have given up waiting; nothing to do then.
                let _ = reply.send(answer);
            }
            DeviceCall::Judge {
                device,
                region,
                reply,
            } => {
                let answer = self.judge_region(device, &region).map(drop);
                let _ = reply.send(answer);
            }
            DeviceCall::Table {
                device,
                conn,
                table,
            } => self.device_table(device, conn, table),
            DeviceCall::Gone { device, conn } => {
                if self.devices.tables.remove(&(device, conn)).is_some() {
                    info!("device d{device} connection {conn} closed: its memory table is gone");
                    self.reapply_tables(device);
                }
                self.persist();
            }
        }
    }

    fn device_connect(
        &self,
        device: u32,
        conn: u64,
        peer: crate::ledger::Peer,
        principal: &crate::principal::Principal,
    ) -> Result<DeviceGrant, String> {
        let spec = self
            .devices
            .specs
            .get(&device)
            .ok_or_else(|| format!("device d{device} is gone"))?;
        let vm = self
            .ledger
            .vm(spec.vm)
            .ok_or_else(|| format!("device d{device}'s VM is gone"))?;
        let operator = self.config.admission(peer.uid) == crate::config::Admission::Operator;
        if !operator && !vm.tie.admits(principal) {
            return Err(format!(
                "pid {} ({}) is not VM {}'s principal",
                peer.pid,
                crate::principal::describe(principal),
                vm.vm
            ));
        }
        let disk = match &spec.disk {
            None => None,
            Some(name) => {
                let key = FileKey::vm(spec.vm, name.clone());
                let fd = self
                    .memfiles
                    .get(&key)
                    .ok_or_else(|| format!("disk {name} of VM {} is gone", vm.vm))?;
                Some(
                    fd.try_clone()
                        .map_err(|e| format!("dup of disk {name}: {e}"))?,
                )
            }
        };
        info!(
            "device d{device} connection {conn}: pid {} for VM {}",
            peer.pid, vm.vm
        );
        Ok(DeviceGrant {
            disk,
            queues: spec.queues,
            serial: format!("gmemd-d{device}"),
        })
    }

    /// The file of device `device`'s VM that `region` maps, if the region
    /// may be mapped: a file of that VM (by inode), of a kind whose size
    /// nobody can change, the range inside it.
    fn judge_region(&self, device: u32, region: &MappedRegion) -> Result<FileKey, String> {
        let spec = self
            .devices
            .specs
            .get(&device)
            .ok_or_else(|| format!("device d{device} is gone"))?;
        let key = self
            .file_of_inode(region.dev, region.ino)
            .ok_or_else(|| "not a gmemd memory file".to_owned())?;
        if key.space != crate::ledger::Space::Vm(spec.vm) {
            return Err(format!(
                "{} is not a file of the device's VM",
                self.ledger.label(&key)
            ));
        }
        let file = self.ledger.file(&key).map_err(|e| e.to_string())?;
        if file.spec.kind == MemoryKind::GuestMemfd {
            return Err(format!("{} is a guest_memfd", key.name));
        }
        let end = region
            .mmap_offset
            .checked_add(region.memory_size)
            .filter(|end| *end <= file.spec.size)
            .ok_or_else(|| {
                format!(
                    "{} is {} bytes: the region runs past its end",
                    key.name, file.spec.size
                )
            })?;
        debug!(
            "device d{device}: {} [{:#x}, {end:#x}) at GPA {:#x} may be mapped",
            key.name, region.mmap_offset, region.guest_phys_addr
        );
        Ok(key)
    }

    /// The memory file with inode (`dev`, `ino`).
    fn file_of_inode(&self, dev: u64, ino: u64) -> Option<FileKey> {
        self.memfiles.iter().find_map(|(key, _, fd)| {
            let st = rustix::fs::fstat(fd).ok()?;
            (st.st_dev == dev && st.st_ino == ino).then(|| key.clone())
        })
    }

    /// A device connection's table: every region confirms the binding
    /// that maps it, corrects the binding's GPA where QEMU put it
    /// elsewhere, or is recorded as a new binding of the VM's lease.
    fn device_table(&mut self, device: u32, conn: u64, table: Vec<MappedRegion>) {
        let Some(spec) = self.devices.specs.get(&device).cloned() else {
            return;
        };
        let mut resolved = Vec::new();
        for region in table {
            match self.judge_region(device, &region) {
                Ok(key) => resolved.push((key, region)),
                Err(e) => warn!("device d{device}: a region of its table is not the VM's: {e}"),
            }
        }
        let lease = self.ledger.vm(spec.vm).and_then(|v| v.lease);
        for (key, region) in &resolved {
            match lease {
                Some(lease) => self.record_region(device, lease, key, region),
                None => info!(
                    "device d{device}: {} at GPA {:#x} is mapped by QEMU but VM has no lease to \
                     record it in",
                    key.name, region.guest_phys_addr
                ),
            }
        }
        info!(
            "device d{device} connection {conn}: memory table of {} region(s)",
            resolved.len()
        );
        self.devices.tables.insert((device, conn), resolved);
        if let Some(lease) = lease {
            self.drop_unmapped_records(device, lease);
        }
        self.persist();
    }

    /// Applies again the live tables of device `device`'s VM, so a
    /// connection that moved a binding and went away (a second frontend
    /// of the VM's principal) leaves the bindings where the QEMUs still
    /// connected map them.
    fn reapply_tables(&mut self, device: u32) {
        let Some(vm) = self.devices.specs.get(&device).map(|s| s.vm) else {
            return;
        };
        let Some(lease) = self.ledger.vm(vm).and_then(|v| v.lease) else {
            return;
        };
        let vm_devices: Vec<u32> = self
            .devices
            .specs
            .values()
            .filter(|s| s.vm == vm)
            .map(|s| s.id)
            .collect();
        let live: Vec<(u32, FileKey, MappedRegion)> = self
            .devices
            .tables
            .iter()
            .filter(|((d, _), _)| vm_devices.contains(d))
            .flat_map(|((d, _), t)| t.iter().map(move |(k, r)| (*d, k.clone(), r.clone())))
            .collect();
        for (d, key, region) in &live {
            self.record_region(*d, lease, key, region);
        }
    }

    /// Unbinds what was recorded from a memory table (slots from
    /// [`RECORDED_SLOT_BASE`]) once no live table maps it any more (QEMU
    /// removed the region: a DIMM unplugged). A connection that merely
    /// went away takes nothing: QEMU reconnects with the same table.
    fn drop_unmapped_records(&mut self, device: u32, lease: LeaseId) {
        let Ok(record) = self.ledger.lease(lease) else {
            return;
        };
        let vm = record.vm.uuid;
        let gone: Vec<u32> = record
            .bindings()
            .filter(|b| b.slot >= RECORDED_SLOT_BASE)
            .filter(|b| !self.devices.confirms(&FileKey::vm(vm, b.file.clone()), b))
            .map(|b| b.slot)
            .collect();
        for slot in gone {
            match self.ledger.unbind(lease, slot) {
                Ok((b, _)) => info!(
                    "device d{device}: QEMU no longer maps {} [{:#x}+{:#x}]: lease {lease} \
                     slot {slot} unbound",
                    b.file, b.offset, b.size
                ),
                Err(e) => warn!("device d{device}: unbinding recorded slot {slot}: {e}"),
            }
        }
    }

    /// BIND, where a binding recorded from QEMU's memory table (slot from
    /// [`RECORDED_SLOT_BASE`]) with exactly this range and GPA moves to the
    /// slot asked for: QEMU reports a hotplugged DIMM before the launcher
    /// that plugged it gets to BIND it. Returns whether the owner was set.
    pub(super) fn bind_over_recorded(
        &mut self,
        lease: LeaseId,
        req: &BindRequest,
    ) -> ServiceResult<bool> {
        let twin = self.ledger.lease(lease)?.bindings().find(|b| {
            b.slot >= RECORDED_SLOT_BASE
                && b.slot != req.slot
                && b.file == req.name
                && b.offset == req.offset
                && b.size == req.size
                && b.gpa == req.gpa
        });
        let Some(twin) = twin.cloned() else {
            return Ok(self.ledger.bind(lease, req)?);
        };
        self.ledger.unbind(lease, twin.slot)?;
        match self.ledger.bind(lease, req) {
            Ok(_) => {
                info!(
                    "lease {lease}: slot {} recorded from QEMU's memory table is slot {} now",
                    twin.slot, req.slot
                );
                Ok(false)
            }
            Err(e) => {
                let back = BindRequest::new(twin.slot, twin.gpa, twin.file, twin.offset, twin.size);
                if let Err(again) = self.ledger.bind(lease, &back) {
                    warn!(
                        "lease {lease}: slot {} could not be put back: {again}",
                        twin.slot
                    );
                }
                Err(e.into())
            }
        }
    }

    fn record_region(&mut self, device: u32, lease: LeaseId, key: &FileKey, region: &MappedRegion) {
        let Ok(record) = self.ledger.lease(lease) else {
            return;
        };
        let same_range = record
            .bindings()
            .find(|b| {
                b.file == key.name && b.offset == region.mmap_offset && b.size == region.memory_size
            })
            .cloned();
        let gpa = GuestAddress(region.guest_phys_addr);
        let slot = match same_range {
            Some(b) if b.gpa == gpa => {
                debug!(
                    "device d{device}: slot {} of lease {lease} confirmed",
                    b.slot
                );
                return;
            }
            Some(b) => {
                info!(
                    "device d{device}: QEMU maps {} [{:#x}+{:#x}] at GPA {:#x}, not {:#x} as \
                     lease {lease} recorded in slot {}: recorded anew",
                    key.name, b.offset, b.size, gpa.0, b.gpa.0, b.slot
                );
                if let Err(e) = self.ledger.unbind(lease, b.slot) {
                    warn!("device d{device}: unbinding slot {}: {e}", b.slot);
                    return;
                }
                b.slot
            }
            None => {
                let used: Vec<u32> = record.bindings().map(|b| b.slot).collect();
                (RECORDED_SLOT_BASE..)
                    .find(|s| !used.contains(s))
                    .expect("a free slot")
            }
        };
        let req = BindRequest::new(
            slot,
            gpa,
            key.name.clone(),
            region.mmap_offset,
            region.memory_size,
        );
        match self.ledger.bind(lease, &req) {
            Ok(_) => info!(
                "device d{device}: lease {lease} slot {slot}: {} [{:#x}+{:#x}] at GPA {:#x}, \
                 from QEMU's memory table",
                key.name, region.mmap_offset, region.memory_size, gpa.0
            ),
            Err(e) => warn!(
                "device d{device}: QEMU maps {} at GPA {:#x} but it cannot be recorded: {e}",
                key.name, gpa.0
            ),
        }
    }
}
