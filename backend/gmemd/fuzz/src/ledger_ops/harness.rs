//! The harness: applies operations to a ledger and checks what each promises.

use gmem_protocol::wire::{BindRequest, GuestAddress, LeaseId, MemoryKind, VmId, VmSelector};
use gmemd::ledger::{FileKey, FileSpec, Ledger, LedgerError, Peer, Space};
use gmemd::principal::Tie;

use super::*;

/// A ledger and the state the fuzz input drives it with.
#[derive(Debug)]
pub struct Harness {
    /// The ledger under test.
    pub ledger: Ledger,
    next_id: LeaseId,
    alive: u8,
    now: u64,
    retired: Vec<(Option<Tie>, u64, Holders)>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// An empty ledger.
    pub fn new() -> Self {
        Harness {
            ledger: Ledger::new(),
            next_id: LeaseId::FIRST,
            alive: 0,
            now: 0,
            retired: Vec::new(),
        }
    }

    /// Below 0xf0: one of the open leases (if any); otherwise, or with no
    /// lease open, the raw id `(b & 0xf) + 1` (often closed or never opened).
    fn lease(&self, b: u8) -> LeaseId {
        let open: Vec<LeaseId> = self.ledger.leases().map(|(id, _)| id).collect();
        if b < 0xf0 && !open.is_empty() {
            open[usize::from(b) % open.len()]
        } else {
            LeaseId::new(u64::from(b & 0xf) + 1).expect("non-zero")
        }
    }

    fn is_alive(&self) -> impl FnMut(u32) -> bool {
        let mask = self.alive;
        move |pid| mask >> (pid % 8) & 1 == 1
    }

    /// Applies one operation and checks every property. Returns whether the
    /// ledger accepted it.
    pub fn step(&mut self, op: Op) -> bool {
        self.now += 1;
        let before = format!("{:?}", self.ledger);
        let accepted = self.apply(op);
        if !accepted {
            assert_eq!(
                before,
                format!("{:?}", self.ledger),
                "refused {op:?} changed the ledger"
            );
        }
        self.ledger.assert_consistent();
        self.check_owners();
        self.check_charges();
        let modelled: Vec<(Option<&Tie>, u64)> = self
            .retired
            .iter()
            .map(|(t, b, _)| (t.as_ref(), *b))
            .collect();
        let retired: Vec<(Option<&Tie>, u64)> = self
            .ledger
            .retired()
            .iter()
            .map(|r| (r.tie.as_ref(), r.bytes))
            .collect();
        assert_eq!(retired, modelled, "retired memory after {op:?}");
        accepted
    }

    /// The tie that pays for `key`'s memory (`None`: an operators' file).
    fn payer(&self, key: &FileKey) -> Option<Tie> {
        key.vm_uuid()
            .and_then(|uuid| self.ledger.vm(uuid))
            .map(|v| v.tie.clone())
    }

    /// Models retiring a file of `bytes` paid by `tie`, held by `holders`.
    fn retire(&mut self, tie: Option<Tie>, bytes: u64, holders: Holders) {
        if !holders.is_empty() {
            self.retired.push((tie, bytes, holders));
        }
    }

    /// Every owner is the open lease of the VM whose namespace the file is
    /// in.
    fn check_owners(&self) {
        for (key, rec) in self.ledger.files() {
            if let Some(owner) = &rec.owner {
                let lease = self
                    .ledger
                    .lease(owner.lease)
                    .unwrap_or_else(|_| panic!("{key} owned by closed lease {}", owner.lease));
                assert_eq!(lease.vm.uuid, owner.vm.uuid, "{key} owner VM");
                assert_eq!(key.space, Space::Vm(owner.vm.uuid), "{key} owned outside");
            }
        }
    }

    /// Every byte counted is charged to exactly one principal, or is an
    /// operators' file.
    fn check_charges(&self) {
        let mut ties: Vec<Tie> = self
            .ledger
            .vms()
            .map(|v| v.tie.clone())
            .chain(self.ledger.retired().iter().filter_map(|r| r.tie.clone()))
            .collect();
        ties.sort();
        ties.dedup();
        let (files, bytes) = ties
            .iter()
            .map(|t| self.ledger.usage_of(t))
            .fold((0, 0), |(f, b), (tf, tb)| (f + tf, b + tb));
        let operators: Vec<_> = self.ledger.files_in(Space::Operators).collect();
        let operators_retired: u64 = self
            .ledger
            .retired()
            .iter()
            .filter(|r| r.tie.is_none())
            .map(|r| r.bytes)
            .sum();
        assert_eq!(files + operators.len(), self.ledger.file_count());
        assert_eq!(
            bytes + operators.iter().map(|(_, f)| f.spec.size).sum::<u64>() + operators_retired,
            self.ledger.total_size() + self.ledger.retired_bytes(),
            "charges do not add up"
        );
    }

    fn apply(&mut self, op: Op) -> bool {
        match op {
            Op::OpenLease { vm: v, who: w, pid } => {
                let id = self.next_id;
                self.next_id = id.next();
                let vm = vm(v);
                let (principal, rules) = who(w);
                let operator = principal.uid == OPERATOR;
                let peer = Peer {
                    pid: u32::from(pid),
                    uid: principal.uid,
                };
                let known = self.ledger.vm(vm.uuid).cloned();
                let result =
                    self.ledger
                        .open_lease(id, vm.clone(), peer, &principal, &rules, operator);
                match &result {
                    Ok(()) => {
                        assert_eq!(self.ledger.lease_of(&VmSelector::Uuid(vm.uuid)), Ok(id));
                        assert_eq!(self.ledger.lease(id).map(|l| l.bindings().count()), Ok(0));
                        let entry = self.ledger.vm(vm.uuid).expect("leased VM known");
                        assert_eq!((entry.lease, entry.idle_since), (Some(id), None));
                        match known {
                            // The tie of a known VM never changes.
                            Some(known) => {
                                assert_eq!(entry.tie, known.tie);
                                assert!(operator || entry.tie.admits(&principal));
                            }
                            None => {
                                let tie = rules.tie_for(&vm, &principal).expect("tied");
                                assert_eq!(entry.tie, tie);
                            }
                        }
                    }
                    Err(LedgerError::OtherPrincipal { .. }) => {
                        assert!(!operator, "an operator refused as another principal");
                        let by_name = self.ledger.find_vm(&VmSelector::Name(vm.name.clone()));
                        let refusing = by_name
                            .into_iter()
                            .chain(Some(vm.uuid))
                            .filter_map(|uuid| self.ledger.vm(uuid))
                            .any(|known| !known.tie.admits(&principal));
                        assert!(refusing, "{vm} refused to an admitted principal");
                    }
                    Err(_) => {}
                }
                result.is_ok()
            }
            Op::CloseLease { lease } => {
                let id = self.lease(lease);
                let Ok(end) = self.ledger.close_lease(id, self.now) else {
                    return false;
                };
                assert!(self.ledger.lease(id).is_err());
                // Files belong to the VM, not to its lease: the VM stays
                // while it has any, idle from now.
                let files = self.ledger.files_in(Space::Vm(end.vm.uuid)).count();
                match self.ledger.vm(end.vm.uuid) {
                    Some(entry) => {
                        assert!(files > 0, "{} kept without files", end.vm);
                        assert_eq!((entry.lease, entry.idle_since), (None, Some(self.now)));
                    }
                    None => assert_eq!(files, 0, "{} untied with files", end.vm),
                }
                for name in &end.released {
                    let rec = self
                        .ledger
                        .file(&FileKey::vm(end.vm.uuid, name.clone()))
                        .expect("released file exists");
                    assert!(rec.owner.is_none(), "released {name} still owned");
                }
                true
            }
            Op::AddFile {
                space: s,
                file: f,
                kind,
                pages,
                depositor,
            } => {
                let kind = MemoryKind::ALL[usize::from(kind) % MemoryKind::ALL.len()];
                let pages = if pages < 128 {
                    u64::from(pages % 17)
                } else {
                    u64::from(pages - 128) * 8
                };
                let spec = FileSpec {
                    size: pages * kind.page_size(),
                    kind,
                    page_size: kind.page_size(),
                };
                let depositor = (depositor & 0x80 != 0).then(|| self.lease(depositor));
                let key = key(s, f);
                let count = key
                    .vm_uuid()
                    .and_then(|u| self.ledger.vm(u))
                    .map(|v| v.files);
                if self.ledger.add_file(key.clone(), spec, depositor).is_err() {
                    return false;
                }
                let rec = self.ledger.file(&key).expect("added");
                assert_eq!((rec.spec, rec.depositor()), (spec, depositor));
                assert!(rec.owner.is_none() && rec.binding_count() == 0);
                assert_eq!(rec.holders().count(), 0);
                if let Some(uuid) = key.vm_uuid() {
                    let now = self
                        .ledger
                        .vm(uuid)
                        .expect("a VM's file needs the VM")
                        .files;
                    assert_eq!(Some(now - 1), count);
                }
                true
            }
            Op::Bind {
                lease,
                slot,
                gpa,
                file: f,
                offset,
                size,
                unit,
            } => {
                let id = self.lease(lease);
                let name = file(f);
                // The file a lease names is its VM's, whatever else exists.
                let key = self
                    .ledger
                    .lease(id)
                    .ok()
                    .map(|l| FileKey::vm(l.vm.uuid, name.clone()));
                let record = key.as_ref().and_then(|k| self.ledger.file(k).ok());
                let unit_size = match unit & 3 {
                    0 => record.map_or(4096, |r| r.spec.page_size),
                    1 => 4096,
                    2 => 2 << 20,
                    _ => 1,
                };
                let was_owned = record.is_some_and(|r| r.owner.is_some());
                let wide = unit & 32 != 0;
                let value = |v: u8, modulus: u8, negate: bool| {
                    let v = if wide { v } else { v % modulus };
                    let v = u64::from(v) * unit_size;
                    if negate {
                        v.wrapping_neg()
                    } else {
                        v
                    }
                };
                let req = BindRequest::new(
                    u32::from(if wide { slot } else { slot % 8 }),
                    GuestAddress(value(gpa, 32, unit & 4 != 0)),
                    name.clone(),
                    value(offset, 18, unit & 8 != 0),
                    value(size % 6, 6, unit & 16 != 0),
                );
                let Ok(sets_owner) = self.ledger.bind(id, &req) else {
                    return false;
                };
                assert_eq!(sets_owner, !was_owned);
                let key = key.expect("bound through an open lease");
                let rec = self.ledger.file(&key).expect("bound file exists");
                if rec.spec.kind == MemoryKind::GuestMemfd {
                    assert_eq!(rec.depositor(), Some(id), "guest_memfd of another lease");
                }
                let owner = rec.owner.as_ref().expect("bound file has an owner");
                assert_eq!(owner.lease, id, "owner is not the binding lease");
                let lease = self.ledger.lease(id).expect("binding lease is open");
                let b = lease
                    .bindings()
                    .find(|b| b.slot == req.slot)
                    .expect("binding recorded in its slot");
                assert_eq!((b.gpa, b.offset, b.size), (req.gpa, req.offset, req.size));
                assert_eq!(b.file, name);
                true
            }
            Op::Unbind { lease, slot } => {
                let id = self.lease(lease);
                let slot = u32::from(if slot < 128 { slot % 8 } else { slot - 128 });
                let Ok((binding, cleared)) = self.ledger.unbind(id, slot) else {
                    return false;
                };
                assert_eq!(binding.slot, slot);
                let lease = self.ledger.lease(id).expect("lease still open");
                assert!(lease.bindings().all(|b| b.slot != slot), "slot still bound");
                let key = FileKey::vm(lease.vm.uuid, binding.file.clone());
                if let Ok(rec) = self.ledger.file(&key) {
                    assert_eq!(cleared, rec.owner.is_none());
                } else {
                    assert!(!cleared, "owner cleared on a missing file");
                }
                true
            }
            Op::RemoveFile {
                space: s,
                file: f,
                operator,
            } => {
                let key = key(s, f);
                let retired = self.ledger.retired_bytes();
                let payer = self.payer(&key);
                let Ok((dropped, record)) = self.ledger.remove_file(&key, operator & 1 == 1) else {
                    return false;
                };
                self.retire(payer, record.spec.size, record.holders().collect());
                assert!(self.ledger.file(&key).is_err(), "{key} still present");
                assert!(dropped.iter().all(|b| b.file == key.name));
                self.check_no_binding_of(&key);
                // Its memory lives on, charged, while anyone may hold it.
                let held = record.holders().count() > 0;
                let expected = retired + if held { record.spec.size } else { 0 };
                assert_eq!(self.ledger.retired_bytes(), expected);
                true
            }
            Op::MoveFile {
                from_space,
                from_file,
                to_space,
                to_file,
            } => {
                let (from, to) = (key(from_space, from_file), key(to_space, to_file));
                let checked = self.ledger.check_move(&from, &to);
                let old = self.ledger.file(&from).ok().cloned();
                let retired = self.ledger.retired_bytes();
                let payer = self.payer(&from);
                let moved = self.ledger.move_file(&from, to.clone());
                assert_eq!(checked, moved, "check_move and move_file disagree");
                let Ok(spec) = moved else {
                    return false;
                };
                let old = old.expect("moved file existed");
                self.retire(payer, old.spec.size, old.holders().collect());
                assert!(self.ledger.file(&from).is_err(), "{from} still present");
                let rec = self.ledger.file(&to).expect("moved file arrived");
                assert_eq!(rec.spec, spec);
                assert_eq!(old.spec, spec);
                assert_ne!(spec.kind, MemoryKind::GuestMemfd, "a guest_memfd moved");
                assert!(old.owner.is_none(), "a bound file moved");
                // A fresh inode: nobody holds it yet.
                assert_eq!(rec.holders().count(), 0);
                let held = old.holders().count() > 0;
                let expected = retired + if held { spec.size } else { 0 };
                assert_eq!(self.ledger.retired_bytes(), expected);
                true
            }
            Op::Forget { vm: v } => {
                let vm = vm(v);
                let selector = if v & 0x80 != 0 {
                    VmSelector::Name(vm.name.clone())
                } else {
                    VmSelector::Uuid(vm.uuid)
                };
                let leaving: Vec<(u64, Holders)> = self
                    .ledger
                    .find_vm(&selector)
                    .map(|uuid| {
                        self.ledger
                            .files_in(Space::Vm(uuid))
                            .map(|(_, r)| (r.spec.size, r.holders().collect()))
                            .collect()
                    })
                    .unwrap_or_default();
                let payer = self
                    .ledger
                    .find_vm(&selector)
                    .ok()
                    .and_then(|uuid| self.ledger.vm(uuid))
                    .map(|v| v.tie.clone());
                let Ok((entry, files)) = self.ledger.forget(&selector) else {
                    return false;
                };
                for (bytes, holders) in leaving {
                    self.retire(payer.clone(), bytes, holders);
                }
                assert_eq!(entry.lease, None, "forgot a leased VM");
                let uuid = entry.vm.uuid;
                assert!(self.ledger.vm(uuid).is_none());
                assert_eq!(self.ledger.files_in(Space::Vm(uuid)).count(), 0);
                assert_eq!(files.len(), entry.files);
                // UUID and name are free for anyone.
                assert!(self.ledger.find_vm(&VmSelector::Uuid(uuid)).is_err());
                let name = VmSelector::Name(entry.vm.name.clone());
                assert!(self.ledger.find_vm(&name).is_err());
                true
            }
            Op::AddHolder {
                space: s,
                file: f,
                pid,
                lease,
            } => {
                let key = key(s, f);
                let pid = u32::from(pid % 8);
                let through = (lease & 0x80 != 0).then(|| self.lease(lease));
                let earlier = self
                    .ledger
                    .file(&key)
                    .ok()
                    .and_then(|r| r.holders().find(|(p, _)| *p == pid))
                    .map(|(_, l)| l);
                if self.ledger.add_holder(&key, pid, through).is_err() {
                    return false;
                }
                let rec = self.ledger.file(&key).expect("holder added");
                let expected = through.or(earlier.flatten());
                assert!(rec.holders().any(|h| h == (pid, expected)));
                true
            }
            Op::ReplaceInode { space: s, file: f } => {
                let key = key(s, f);
                let Ok(before) = self.ledger.file(&key).cloned() else {
                    assert!(self.ledger.replace_inode(&key).is_err());
                    return false;
                };
                let retired = self.ledger.retired_bytes();
                self.ledger.replace_inode(&key).expect("file exists");
                let payer = self.payer(&key);
                self.retire(payer, before.spec.size, before.holders().collect());
                let rec = self.ledger.file(&key).expect("file stays");
                assert_eq!(rec.holders().count(), 0);
                assert_eq!(rec.spec, before.spec);
                assert_eq!(rec.binding_count(), before.binding_count());
                let held = before.holders().count() > 0;
                let expected = retired + if held { before.spec.size } else { 0 };
                assert_eq!(self.ledger.retired_bytes(), expected);
                true
            }
            Op::PruneHolders => {
                let mut alive = self.is_alive();
                let before: Vec<(FileKey, Holders)> = self
                    .ledger
                    .files()
                    .map(|(k, r)| (k.clone(), r.holders().collect()))
                    .collect();
                self.ledger.prune_holders(&mut alive);
                // Exactly the holders whose process is gone and whose lease
                // (if any) is closed are forgotten, in files and in retired
                // memory.
                let mut alive = self.is_alive();
                let ledger = &self.ledger;
                let mut stays =
                    |&(pid, lease): &(u32, Option<LeaseId>)| alive(pid) || ledger.lease_open(lease);
                for (key, mut holders) in before {
                    holders.retain(&mut stays);
                    let rec = ledger.file(&key).expect("pruning keeps files");
                    assert_eq!(rec.holders().collect::<Holders>(), holders, "{key}");
                }
                for (_, _, holders) in &mut self.retired {
                    holders.retain(&mut stays);
                }
                self.retired.retain(|(_, _, holders)| !holders.is_empty());
                // With every pid dead and no lease open, nothing is left.
                if self.alive == 0 && self.ledger.lease_count() == 0 {
                    assert_eq!(self.ledger.retired_bytes(), 0);
                    assert!(self.ledger.retired().is_empty());
                }
                true
            }
            Op::SetAlive { mask } => {
                self.alive = mask;
                true
            }
            Op::Fill { lease, file: f } => {
                let id = self.lease(lease);
                let name = file(f);
                let Ok(uuid) = self.ledger.lease(id).map(|l| l.vm.uuid) else {
                    return false;
                };
                let key = FileKey::vm(uuid, name.clone());
                let Ok(spec) = self.ledger.file(&key).map(|r| r.spec) else {
                    return false;
                };
                let mut bound = 0;
                for i in 0..spec.size / spec.page_size {
                    let req = BindRequest::new(
                        8 + u32::try_from(i).expect("at most 1016 pages"),
                        GuestAddress((1 << 40) + i * spec.page_size),
                        name.clone(),
                        i * spec.page_size,
                        spec.page_size,
                    );
                    match self.ledger.bind(id, &req) {
                        Ok(_) => bound += 1,
                        Err(LedgerError::TooManyBindings { limit, .. }) => {
                            let rec = self.ledger.file(&key).expect("file exists");
                            assert_eq!(rec.binding_count(), limit);
                            break;
                        }
                        Err(_) => {}
                    }
                }
                bound > 0
            }
            Op::LeaseOf { vm: v } => {
                let vm = vm(v);
                let leases_where = |same: &dyn Fn(&VmId) -> bool| -> Vec<LeaseId> {
                    self.ledger
                        .leases()
                        .filter(|(_, l)| same(&l.vm))
                        .map(|(id, _)| id)
                        .collect()
                };
                let by_uuid = leases_where(&|l| l.uuid == vm.uuid);
                let by_name = leases_where(&|l| l.name == vm.name);
                // One UUID, one name, one lease.
                assert!(by_uuid.len() <= 1, "two leases for one UUID");
                assert!(by_name.len() <= 1, "two leases for one name");
                let found = self.ledger.lease_of(&VmSelector::Uuid(vm.uuid));
                assert_eq!(found.ok(), by_uuid.first().copied(), "lease_of uuid");
                let found = self.ledger.lease_of(&VmSelector::Name(vm.name.clone()));
                assert_eq!(found.ok(), by_name.first().copied(), "lease_of name");
                let uuid = self.ledger.find_vm(&VmSelector::Uuid(vm.uuid));
                assert_eq!(uuid.is_ok(), self.ledger.vm(vm.uuid).is_some());
                if let Ok(uuid) = self.ledger.find_vm(&VmSelector::Name(vm.name.clone())) {
                    let entry = self.ledger.vm(uuid).expect("a named VM is known");
                    assert_eq!(entry.vm.name, vm.name);
                }
                true
            }
        }
    }

    /// No lease binds `key` any more.
    fn check_no_binding_of(&self, key: &FileKey) {
        for (_, l) in self.ledger.leases() {
            if key.space == Space::Vm(l.vm.uuid) {
                assert!(
                    l.bindings().all(|b| b.file != key.name),
                    "binding of removed file {key} survives"
                );
            }
        }
    }
}
