//! The state a journal describes: the last record of every entity.

use std::collections::BTreeMap;

use super::record::{
    DeviceRec, FileRec, LeaseRec, Meta, PoolRec, Record, RetiredRec, SessionRec, VmRec,
};

/// Entities by id, as the intact records left them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Counters and history.
    pub meta: Meta,
    /// Files by id.
    pub files: BTreeMap<u64, FileRec>,
    /// VMs by UUID.
    pub vms: BTreeMap<[u8; 16], VmRec>,
    /// Leases by id.
    pub leases: BTreeMap<u64, LeaseRec>,
    /// Retired memory.
    pub retired: Vec<RetiredRec>,
    /// Connections by id.
    pub sessions: BTreeMap<u64, SessionRec>,
    /// vhost-user devices by id.
    pub devices: BTreeMap<u32, DeviceRec>,
    /// Ready warm-pool files by id.
    pub pool: BTreeMap<u64, PoolRec>,
}

impl State {
    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Meta(m) => self.meta = m,
            Record::File(f) => {
                // A pool file a CREATE took keeps its id.
                self.pool.remove(&f.fid);
                self.files.insert(f.fid, f);
            }
            Record::FileGone { fid } => {
                self.files.remove(&fid);
                self.pool.remove(&fid);
            }
            Record::PoolFile(p) => {
                self.pool.insert(p.fid, p);
            }
            Record::Vm(v) => {
                self.vms.insert(v.uuid, v);
            }
            Record::VmGone { uuid } => {
                self.vms.remove(&uuid);
            }
            Record::Lease(l) => {
                self.leases.insert(l.id, l);
            }
            Record::LeaseGone { id } => {
                self.leases.remove(&id);
            }
            Record::Retired(r) => self.retired = r,
            Record::Session(s) => {
                self.sessions.insert(s.sid, s);
            }
            Record::SessionGone { sid } => {
                self.sessions.remove(&sid);
            }
            Record::Device(d) => {
                self.devices.insert(d.id, d);
            }
            Record::DeviceGone { id } => {
                self.devices.remove(&id);
            }
        }
    }

    /// The records that describe this state (a snapshot).
    pub fn records(&self) -> Vec<Record> {
        let mut out = vec![Record::Meta(self.meta.clone())];
        out.extend(self.vms.values().cloned().map(Record::Vm));
        out.extend(self.files.values().cloned().map(Record::File));
        out.extend(self.leases.values().cloned().map(Record::Lease));
        out.push(Record::Retired(self.retired.clone()));
        out.extend(self.sessions.values().cloned().map(Record::Session));
        out.extend(self.devices.values().cloned().map(Record::Device));
        out.extend(self.pool.values().cloned().map(Record::PoolFile));
        out
    }
}
