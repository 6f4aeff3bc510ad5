//! A ledger rebuilt from what a journal describes (DESIGN: gmemd outlives
//! its process). Everything derived (counts, owners, the name index) is
//! computed again, and every binding is validated again as if it were
//! bound now; what does not fit is reported and left out, never guessed.

use gmem_protocol::wire::{BindRequest, LeaseId, Name, VmId};

use super::{Binding, FileKey, FileSpec, LeaseRecord, Ledger, Peer, Retired, Space, VmEntry};
use crate::principal::Tie;

/// A file as the journal describes it.
#[derive(Debug, Clone)]
pub struct FilePart {
    /// Where it is.
    pub key: FileKey,
    /// Size, kind, page size.
    pub spec: FileSpec,
    /// The lease that deposited it.
    pub depositor: Option<LeaseId>,
    /// Holders.
    pub holders: Vec<(u32, Option<LeaseId>)>,
}

/// The parts of a ledger.
#[derive(Debug, Clone, Default)]
pub struct LedgerParts {
    /// VMs with their ties and idle time.
    pub vms: Vec<(VmId, Tie, Option<u64>)>,
    /// Files.
    pub files: Vec<FilePart>,
    /// Leases with their peers and bindings.
    pub leases: Vec<(LeaseId, VmId, Peer, Vec<Binding>)>,
    /// Retired memory.
    pub retired: Vec<Retired>,
    /// The time now: a VM whose lease record was lost is idle from now.
    pub now: u64,
}

/// What restoring did besides the obvious.
#[derive(Debug, Default)]
pub struct Restored {
    /// Problems found and what was done, for the log.
    pub notes: Vec<String>,
    /// Files that had to move (their VM was not described): from, to.
    pub moved: Vec<(FileKey, FileKey)>,
}

impl Ledger {
    /// Rebuilds a ledger from its parts.
    pub fn restore(parts: LedgerParts) -> (Ledger, Restored) {
        let mut l = Ledger::new();
        let mut out = Restored::default();
        for (vm, tie, idle_since) in parts.vms {
            if let Some(other) = l.names.get(&vm.name) {
                out.notes.push(format!(
                    "VM {vm}: its name is VM {other}'s too; left out (its files move to the \
                     operators)"
                ));
                continue;
            }
            l.names.insert(vm.name.clone(), vm.uuid);
            l.vms.insert(
                vm.uuid,
                VmEntry {
                    vm,
                    tie,
                    lease: None,
                    files: 0,
                    bytes: 0,
                    idle_since,
                },
            );
        }
        for (id, vm, peer, _) in &parts.leases {
            let known = l.vms.get(&vm.uuid).map(|v| (v.vm.name == vm.name, v.lease));
            match known {
                Some((true, None)) => {}
                Some((false, _)) | Some((true, Some(_))) => {
                    out.notes.push(format!(
                        "lease {id} of VM {vm}: does not fit the VM's record; left out"
                    ));
                    continue;
                }
                None => {
                    if l.names.contains_key(&vm.name) {
                        out.notes
                            .push(format!("lease {id} of VM {vm}: name taken; left out"));
                        continue;
                    }
                    out.notes.push(format!(
                        "VM {vm}: its record was lost; tied again to uid {} of its lease {id}",
                        peer.uid
                    ));
                    l.names.insert(vm.name.clone(), vm.uuid);
                    l.vms.insert(
                        vm.uuid,
                        VmEntry {
                            vm: vm.clone(),
                            tie: Tie {
                                uid: peer.uid,
                                cgroup: None,
                                label: None,
                            },
                            lease: None,
                            files: 0,
                            bytes: 0,
                            idle_since: None,
                        },
                    );
                }
            }
            let entry = l.vms.get_mut(&vm.uuid).expect("known or just made");
            entry.lease = Some(*id);
            entry.idle_since = None;
            l.leases.insert(
                *id,
                LeaseRecord {
                    vm: vm.clone(),
                    peer: *peer,
                    bindings: std::collections::BTreeMap::new(),
                },
            );
        }
        for file in parts.files {
            l.restore_file(file, &mut out);
        }
        for (id, vm, _, bindings) in parts.leases {
            if !l.leases.contains_key(&id) {
                continue;
            }
            for b in bindings {
                let req = BindRequest::new(b.slot, b.gpa, b.file.clone(), b.offset, b.size);
                if let Err(e) = l.bind(id, &req) {
                    out.notes.push(format!(
                        "lease {id} (VM {}): binding of slot {} left out: {e}",
                        vm.name, b.slot
                    ));
                }
            }
        }
        for vm in l.vms.values_mut() {
            if vm.lease.is_none() && vm.idle_since.is_none() {
                vm.idle_since = Some(parts.now);
            }
        }
        for r in parts.retired {
            l.retired_bytes += r.bytes;
            l.retired.push(r);
        }
        let unused: Vec<_> = l
            .vms
            .values()
            .filter(|v| v.files == 0 && v.lease.is_none())
            .map(|v| v.vm.uuid)
            .collect();
        for uuid in unused {
            l.untie_if_unused(uuid);
        }
        l.take_changes();
        (l, out)
    }

    fn restore_file(&mut self, file: FilePart, out: &mut Restored) {
        let mut key = file.key.clone();
        if let Space::Vm(uuid) = key.space {
            if !self.vms.contains_key(&uuid) {
                key = self.free_operators_name(&format!("recovered.{}", key.name));
                out.notes.push(format!(
                    "file {} of VM {uuid}: the VM's record was lost; kept as the operators' {}",
                    file.key.name, key.name
                ));
                out.moved.push((file.key.clone(), key.clone()));
            }
        }
        if self.files.contains_key(&key) {
            let to = self.free_operators_name(&format!("recovered.{}", key.name));
            out.notes.push(format!(
                "file {}: described twice; the second kept as the operators' {}",
                self.label(&key),
                to.name
            ));
            out.moved.push((file.key.clone(), to.clone()));
            key = to;
        }
        let depositor = file.depositor.filter(|_| key == file.key);
        self.add_file(key.clone(), file.spec, depositor)
            .expect("a free key in a known namespace");
        let record = self.files.get_mut(&key).expect("just added");
        record.holders = file.holders.into_iter().collect();
    }

    /// `base`, or `base.N`, free in the operators' namespace.
    fn free_operators_name(&self, base: &str) -> FileKey {
        (0u32..)
            .map(|n| {
                let text = if n == 0 {
                    base.to_owned()
                } else {
                    format!("{base}.{n}")
                };
                // Names are at most 63 bytes; keep the end, which tells.
                let text = &text[text.len().saturating_sub(63)..];
                FileKey::operators(Name::new(text).unwrap_or_else(|_| {
                    Name::new(&format!("recovered.{n}")).expect("a valid name")
                }))
            })
            .find(|k| !self.files.contains_key(k))
            .expect("some name is free")
    }
}
