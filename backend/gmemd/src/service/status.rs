//! STATUS pages built from the ledger.

use std::collections::HashMap;

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    encode_status_page, BindingStatus, FileStatus, LeaseStatus, Name, OwnerStatus, StatusQuery,
    StatusSection, Uuid,
};

use super::Service;
use crate::ledger::FileRecord;

impl Service {
    pub(super) fn status(&self, query: StatusQuery) -> Response {
        let start = query.start as usize;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let body = match query.section {
            StatusSection::Files => {
                let entries: Vec<FileStatus> = self
                    .ledger
                    .files()
                    .skip(start)
                    .map(|(name, f)| self.file_status(name, f))
                    .collect();
                let total = count(self.ledger.files().count());
                encode_status_page(total, query.start, &entries, FileStatus::encode).0
            }
            StatusSection::Leases => {
                // One pass over the files, not one per lease.
                let mut files_of: HashMap<Uuid, usize> = HashMap::new();
                for (_, file) in self.ledger.files() {
                    if let Some(vm) = file.creator() {
                        *files_of.entry(vm.uuid).or_default() += 1;
                    }
                }
                let entries: Vec<LeaseStatus> = self
                    .ledger
                    .leases()
                    .skip(start)
                    .map(|(id, l)| LeaseStatus {
                        lease: id,
                        vm: l.vm.clone(),
                        pid: self.lease_pid(id, l.peer.pid),
                        uid: l.peer.uid,
                        bindings: count(l.bindings().count()),
                        files: count(files_of.get(&l.vm.uuid).copied().unwrap_or(0)),
                    })
                    .collect();
                let total = count(self.ledger.leases().count());
                encode_status_page(total, query.start, &entries, LeaseStatus::encode).0
            }
        };
        Response::ok(body)
    }

    fn file_status(&self, name: &Name, file: &FileRecord) -> FileStatus {
        let owner = file.owner.as_ref().map(|o| OwnerStatus {
            vm: o.vm.clone(),
            lease: o.lease,
        });
        let bindings = file
            .owner
            .as_ref()
            .and_then(|o| self.ledger.lease(o.lease).ok())
            .map(|l| {
                l.bindings()
                    .filter(|b| &b.file == name)
                    .map(|b| BindingStatus {
                        slot: b.slot,
                        gpa: b.gpa,
                        offset: b.offset,
                        size: b.size,
                    })
                    .collect()
            })
            .unwrap_or_default();
        FileStatus {
            name: name.clone(),
            size: file.spec.size,
            page_size: file.spec.page_size,
            kind: file.spec.kind,
            owner,
            bindings,
        }
    }
}
