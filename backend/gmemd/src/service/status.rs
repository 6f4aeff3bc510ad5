//! STATUS pages built from the ledger, showing each session what it may
//! see (need to know: a non-operator sees its own VMs only). A page costs
//! O(start + page): files are read as a range of one namespace at a time,
//! a lease's file count is kept with its VM.

use gmem_protocol::server::Response;
use gmem_protocol::wire::{
    encode_status_page_from, BindingStatus, DaemonStatus, FileStatus, LeaseStatus, OwnerStatus,
    ScopedFileStatus, StatusQuery, StatusSection,
};

use super::scope::View;
use super::{Service, ServiceError, ServiceResult, Session};
use crate::ledger::{FileKey, FileRecord, Space};

impl Service {
    pub(super) fn status(&self, session: &Session, query: StatusQuery) -> ServiceResult<Response> {
        let start = query.start as usize;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let view = self.view(session);
        let body = match query.section {
            StatusSection::Files => {
                let entries = self
                    .visible_files(&view)
                    .skip(start)
                    .map(|(key, f)| self.file_status(key, f));
                let total = count(self.visible_file_count(&view));
                encode_status_page_from(total, query.start, entries, FileStatus::encode).0
            }
            StatusSection::Memory => return self.memory_status(session, query),
            StatusSection::ScopedFiles => {
                if !session
                    .features()
                    .contains(gmem_protocol::wire::Features::VM_SCOPE)
                {
                    return Err(ServiceError::FeatureOff(
                        gmem_protocol::wire::Request::Status,
                    ));
                }
                let entries = self.visible_files(&view).skip(start).map(|(key, f)| {
                    let vm = key.vm_uuid().and_then(|uuid| self.ledger.vm(uuid));
                    ScopedFileStatus {
                        file: self.file_status(key, f),
                        vm: vm.map(|v| v.vm.clone()),
                        idle_secs: self.idle_secs(vm.and_then(|v| v.idle_since)),
                    }
                });
                let total = count(self.visible_file_count(&view));
                encode_status_page_from(total, query.start, entries, ScopedFileStatus::encode).0
            }
            StatusSection::Leases => {
                let entries = self
                    .ledger
                    .leases()
                    .filter(|(_, l)| view.shows(Some(l.vm.uuid)))
                    .skip(start)
                    .map(|(id, l)| LeaseStatus {
                        lease: id,
                        vm: l.vm.clone(),
                        pid: self.lease_pid(id, l.peer.pid),
                        uid: l.peer.uid,
                        bindings: count(l.bindings().count()),
                        files: count(self.ledger.vm(l.vm.uuid).map_or(0, |v| v.files)),
                    });
                let total = match &view {
                    View::All => self.ledger.lease_count(),
                    View::Vms(vms) => vms
                        .iter()
                        .filter(|uuid| self.ledger.vm(**uuid).is_some_and(|v| v.lease.is_some()))
                        .count(),
                };
                encode_status_page_from(count(total), query.start, entries, LeaseStatus::encode).0
            }
            StatusSection::Daemon => {
                let h = &self.history;
                let entry = DaemonStatus {
                    pid: std::process::id(),
                    restarts: u32::try_from(h.restarts).unwrap_or(u32::MAX),
                    born: h.born,
                    started: h.started,
                    files: count(self.visible_file_count(&view)),
                    leases: count(match &view {
                        View::All => self.ledger.lease_count(),
                        View::Vms(vms) => vms
                            .iter()
                            .filter(|u| self.ledger.vm(**u).is_some_and(|v| v.lease.is_some()))
                            .count(),
                    }),
                    recovered: if h.recovered.is_empty() {
                        "nothing: started fresh".to_owned()
                    } else {
                        h.recovered.clone()
                    },
                };
                encode_status_page_from(
                    1,
                    query.start,
                    (query.start == 0).then_some(entry),
                    DaemonStatus::encode,
                )
                .0
            }
        };
        Ok(Response::ok(body))
    }

    /// The files `view` shows, in order.
    fn visible_files<'a>(
        &'a self,
        view: &'a View,
    ) -> Box<dyn Iterator<Item = (&'a FileKey, &'a FileRecord)> + 'a> {
        match view {
            View::All => Box::new(self.ledger.files()),
            View::Vms(vms) => Box::new(
                vms.iter()
                    .flat_map(|uuid| self.ledger.files_in(Space::Vm(*uuid))),
            ),
        }
    }

    fn visible_file_count(&self, view: &View) -> usize {
        match view {
            View::All => self.ledger.file_count(),
            View::Vms(vms) => vms
                .iter()
                .map(|uuid| self.ledger.vm(*uuid).map_or(0, |v| v.files))
                .sum(),
        }
    }

    /// A file's entry: its bindings come from the file's own ranges, so an
    /// entry costs O(its bindings).
    fn file_status(&self, key: &FileKey, file: &FileRecord) -> FileStatus {
        let owner = file.owner.as_ref().map(|o| OwnerStatus {
            vm: o.vm.clone(),
            lease: o.lease,
        });
        let bindings = file
            .bindings()
            .filter_map(|(lease, slot)| self.ledger.binding(lease, slot))
            .map(|b| BindingStatus {
                confirmed: self.devices.confirms(key, b),
                slot: b.slot,
                gpa: b.gpa,
                offset: b.offset,
                size: b.size,
            })
            .collect();
        FileStatus {
            name: key.name.clone(),
            size: file.spec.size,
            page_size: file.spec.page_size,
            kind: file.spec.kind,
            owner,
            bindings,
        }
    }
}
