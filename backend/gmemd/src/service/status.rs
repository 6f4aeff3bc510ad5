//! STATUS pages built from the ledger.

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    encode_status_page, BindingStatus, FileStatus, LeaseStatus, Name, OwnerStatus, StatusQuery,
    StatusSection,
};

use super::Service;

impl Service {
    pub(super) fn status(&mut self, query: StatusQuery) -> Response {
        let start = query.start as usize;
        match query.section {
            StatusSection::Files => {
                let entries: Vec<FileStatus> = self
                    .ledger
                    .files()
                    .skip(start)
                    .map(|(name, f)| self.file_status(name, f))
                    .collect();
                let total = u32::try_from(self.ledger.files().count()).unwrap_or(u32::MAX);
                let (body, _) =
                    encode_status_page(total, query.start, &entries, FileStatus::encode);
                Response::ok(body)
            }
            StatusSection::Leases => {
                let entries: Vec<LeaseStatus> = self
                    .ledger
                    .leases()
                    .skip(start)
                    .map(|(id, l)| LeaseStatus {
                        lease: id,
                        vm: l.vm.clone(),
                        pid: l.peer.pid,
                        uid: l.peer.uid,
                        bindings: u32::try_from(l.bindings().count()).unwrap_or(u32::MAX),
                        files: u32::try_from(self.ledger.files_created_by(id)).unwrap_or(u32::MAX),
                    })
                    .collect();
                let total = u32::try_from(self.ledger.leases().count()).unwrap_or(u32::MAX);
                let (body, _) =
                    encode_status_page(total, query.start, &entries, LeaseStatus::encode);
                Response::ok(body)
            }
        }
    }

    pub(super) fn file_status(&self, name: &Name, file: &crate::ledger::FileRecord) -> FileStatus {
        let owner = file.owner.as_ref().map(|o| OwnerStatus {
            vm: o.vm.clone(),
            lease: o.lease,
        });
        let bindings = file
            .owner
            .as_ref()
            .and_then(|o| self.ledger.lease(o.lease))
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
