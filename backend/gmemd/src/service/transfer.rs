//! Memory between namespaces (DESIGN invariant 6): TRANSFER moves a file
//! to another VM (or back to the operators) as a copy in a fresh inode, so
//! no fd handed out before can reach what the receiving VM does with it;
//! FORGET destroys a VM's files and unties it, freeing its UUID and name.
//! Both are operator requests.

use gmem_protocol::server::Response;
use gmem_protocol::wire::{Request, TransferRequest, VmSelector};
use log::info;

use super::files::{file_info, punch};
use super::{Service, ServiceResult, Session};
use crate::memory;
use crate::size::format_size;

impl Service {
    pub(super) fn transfer(
        &mut self,
        session: &Session,
        req: &TransferRequest,
    ) -> ServiceResult<Response> {
        Self::require_operator(session, Request::Transfer)?;
        let from = self.resolve(session, &req.from, Request::Transfer)?;
        let to = self.resolve(session, &req.to, Request::Transfer)?;
        let spec = self.ledger.check_move(&from, &to)?;
        // The copy is made before anything changes: a failure leaves the
        // file where it was, content intact.
        let fresh = memory::create(&to.name, spec.size, spec.kind)?;
        let old = self
            .memfiles
            .get(&from)
            .expect("every ledger file has an fd");
        let copied = memory::copy_content(old, &fresh, &spec)?;
        let (from_label, to_label) = (self.ledger.label(&from), self.ledger.label(&to));
        self.ledger.move_file(&from, to.clone())?;
        let old = self.memfiles.remove(&from).expect("checked above");
        // Whoever kept the old inode sees zeros from now on.
        punch(&old, &spec, &from_label);
        self.memfiles.insert(to.clone(), fresh);
        info!(
            "transferred {from_label} to {to_label} ({}, {} of content copied into a fresh \
             inode) for {}",
            format_size(spec.size),
            format_size(copied),
            self.describe(session)
        );
        Ok(Response::ok(file_info(spec, true).encode()))
    }

    pub(super) fn forget(&mut self, session: &Session, vm: &VmSelector) -> ServiceResult<Response> {
        Self::require_operator(session, Request::Forget)?;
        let (entry, keys) = self.ledger.forget(vm)?;
        for (key, spec) in &keys {
            if let Some(fd) = self.memfiles.remove(key) {
                // The memory goes now, not when the last old holder exits.
                punch(&fd, spec, &format!("{}/{}", entry.vm.name, key.name));
            }
        }
        let devices = self.drop_devices_of(entry.vm.uuid);
        if !devices.is_empty() {
            info!("VM {}'s devices {devices:?} are gone with it", entry.vm);
        }
        info!(
            "forgot VM {} (was tied to {}): {} file(s) destroyed, for {}",
            entry.vm,
            entry.tie,
            keys.len(),
            self.describe(session)
        );
        Ok(Response::ok(Vec::new()))
    }
}
