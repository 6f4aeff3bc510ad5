//! `ledger_ops`: sequences of operations on `gmemd::ledger::Ledger`.
//!
//! Input layout: a sequence of operations, each an opcode byte (taken modulo
//! [`Op::COUNT`]) followed by that operation's fixed number of argument
//! bytes (missing bytes at the end of the input read as zero). Arguments are
//! mapped onto small worlds: 4 file names, 6 VMs, 8 slots, 8 pids, offsets
//! and sizes of a few pages, so operations collide often. A "wide" bind and
//! the `Fill` operation reach the per-file binding limit
//! (`MAX_BINDINGS_PER_FILE`) in few input bytes.
//!
//! Properties, after every operation: `Ledger::assert_consistent` holds; a
//! refused operation leaves the ledger's `Debug` output unchanged; an
//! accepted one has the effect its documentation promises (checked below);
//! every owner is the open lease of the owning VM.
//!
//! Lease ids come from a counter, as in the daemon (an id is never reused;
//! `open_lease` does not itself refuse a reused id).

use gmem_protocol::wire::GuestAddress;
use gmem_protocol::wire::{BindRequest, LeaseId, MemoryKind, Name, Uuid, VmId, VmSelector};
use gmemd::ledger::{FileSpec, Ledger, LedgerError, Peer};

/// One operation with its raw argument bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `open_lease(next id, vm, pid)`.
    OpenLease {
        /// VM selector byte, see [`vm`].
        vm: u8,
        /// Peer pid.
        pid: u8,
    },
    /// `close_lease`.
    CloseLease {
        /// Lease selector byte, see [`Harness::lease`].
        lease: u8,
    },
    /// `add_file`.
    AddFile {
        /// File selector.
        file: u8,
        /// Kind, modulo 5.
        kind: u8,
        /// Size in pages: below 128 modulo 17, else `(pages - 128) * 8`.
        pages: u8,
        /// Creator: none unless bit 7; then a VM selector.
        creator: u8,
    },
    /// `bind`.
    Bind {
        /// Lease selector.
        lease: u8,
        /// Slot, modulo 8.
        slot: u8,
        /// Guest address in units, modulo 32.
        gpa: u8,
        /// File selector.
        file: u8,
        /// Offset in units, modulo 18.
        offset: u8,
        /// Size in units, modulo 6.
        size: u8,
        /// Bits 0–1: unit (file page size, 4 KiB, 2 MiB, 1 byte); bits 2–4:
        /// negate gpa / offset / size (values near 2^64); bit 5: wide, slot,
        /// gpa and offset taken whole (0..=255) instead of modulo, to reach
        /// the per-file binding limit.
        unit: u8,
    },
    /// `unbind`.
    Unbind {
        /// Lease selector.
        lease: u8,
        /// Slot: below 128 modulo 8, else `slot - 128` (wide and Fill slots).
        slot: u8,
    },
    /// `remove_file`.
    RemoveFile {
        /// File selector.
        file: u8,
        /// Bit 0: as operator.
        operator: u8,
    },
    /// `add_holder`.
    AddHolder {
        /// File selector.
        file: u8,
        /// Pid, modulo 8.
        pid: u8,
        /// VM selector (its UUID is used); from 128 on the holder also came
        /// through a lease (the same byte as a lease selector).
        vm: u8,
    },
    /// `clear_holders`.
    ClearHolders {
        /// File selector.
        file: u8,
    },
    /// `prune_holders` with the current liveness mask.
    PruneHolders,
    /// Sets which pids (bit `pid % 8`) are alive for `bind` and pruning.
    SetAlive {
        /// The mask.
        mask: u8,
    },
    /// `lease_of` by the VM's UUID and by its name (no change).
    LeaseOf {
        /// VM selector byte.
        vm: u8,
    },
    /// Binds every page of a file, one page per binding, into a lease (slots
    /// from 8, guest addresses from 2^40), skipping refused pages and
    /// stopping at the per-file binding limit: reaches a full ledger in one
    /// step instead of 64. Accepted if any page was bound.
    Fill {
        /// Lease selector.
        lease: u8,
        /// File selector.
        file: u8,
    },
}

impl Op {
    /// Number of opcodes.
    pub const COUNT: u8 = 12;

    fn encode_into(self, out: &mut Vec<u8>) {
        let (code, args): (u8, &[u8]) = match self {
            Op::OpenLease { vm, pid } => (0, &[vm, pid]),
            Op::CloseLease { lease } => (1, &[lease]),
            Op::AddFile {
                file,
                kind,
                pages,
                creator,
            } => (2, &[file, kind, pages, creator]),
            Op::Bind {
                lease,
                slot,
                gpa,
                file,
                offset,
                size,
                unit,
            } => (3, &[lease, slot, gpa, file, offset, size, unit]),
            Op::Unbind { lease, slot } => (4, &[lease, slot]),
            Op::RemoveFile { file, operator } => (5, &[file, operator]),
            Op::AddHolder { file, pid, vm } => (6, &[file, pid, vm]),
            Op::ClearHolders { file } => (7, &[file]),
            Op::PruneHolders => (8, &[]),
            Op::SetAlive { mask } => (9, &[mask]),
            Op::LeaseOf { vm } => (10, &[vm]),
            Op::Fill { lease, file } => (11, &[lease, file]),
        };
        out.push(code);
        out.extend_from_slice(args);
    }
}

/// Encodes operations as a fuzz input.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode_into(&mut out);
    }
    out
}

/// Decodes a fuzz input into operations.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut bytes = data.iter().copied();
    let mut ops = Vec::new();
    while let Some(code) = bytes.next() {
        let mut arg = || bytes.next().unwrap_or(0);
        ops.push(match code % Op::COUNT {
            0 => Op::OpenLease {
                vm: arg(),
                pid: arg(),
            },
            1 => Op::CloseLease { lease: arg() },
            2 => Op::AddFile {
                file: arg(),
                kind: arg(),
                pages: arg(),
                creator: arg(),
            },
            3 => Op::Bind {
                lease: arg(),
                slot: arg(),
                gpa: arg(),
                file: arg(),
                offset: arg(),
                size: arg(),
                unit: arg(),
            },
            4 => Op::Unbind {
                lease: arg(),
                slot: arg(),
            },
            5 => Op::RemoveFile {
                file: arg(),
                operator: arg(),
            },
            6 => Op::AddHolder {
                file: arg(),
                pid: arg(),
                vm: arg(),
            },
            7 => Op::ClearHolders { file: arg() },
            8 => Op::PruneHolders,
            9 => Op::SetAlive { mask: arg() },
            10 => Op::LeaseOf { vm: arg() },
            _ => Op::Fill {
                lease: arg(),
                file: arg(),
            },
        });
    }
    ops
}

/// File `f0`..`f3`.
pub fn file(b: u8) -> Name {
    Name::new(&format!("f{}", b % 4)).expect("valid name")
}

/// VM `v0`..`v5`. Below 128 the name matches the UUID's; from 128 on the
/// name is chosen separately, so one UUID can come with several names.
pub fn vm(b: u8) -> VmId {
    let id = b % 6;
    let name_id = if b < 128 { id } else { (b / 6) % 6 };
    VmId {
        uuid: Uuid::from_name(&format!("v{id}")),
        name: Name::new(&format!("v{name_id}")).expect("valid name"),
    }
}

/// A ledger and the state the fuzz input drives it with.
#[derive(Debug)]
pub struct Harness {
    /// The ledger under test.
    pub ledger: Ledger,
    next_id: LeaseId,
    alive: u8,
}

impl Harness {
    /// An empty ledger.
    pub fn new() -> Self {
        Harness {
            ledger: Ledger::new(),
            next_id: LeaseId::FIRST,
            alive: 0,
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
        accepted
    }

    /// Every owner is an open lease of the owning VM.
    fn check_owners(&self) {
        for (name, rec) in self.ledger.files() {
            if let Some(owner) = &rec.owner {
                let lease = self
                    .ledger
                    .lease(owner.lease)
                    .unwrap_or_else(|_| panic!("{name} owned by closed lease {}", owner.lease));
                assert_eq!(lease.vm.uuid, owner.vm.uuid, "{name} owner VM");
            }
        }
    }

    fn apply(&mut self, op: Op) -> bool {
        match op {
            Op::OpenLease { vm: v, pid } => {
                let id = self.next_id;
                self.next_id = id.next();
                let vm = vm(v);
                let peer = Peer {
                    pid: u32::from(pid),
                    uid: 0,
                };
                let result = self.ledger.open_lease(id, vm.clone(), peer);
                if result.is_ok() {
                    assert_eq!(self.ledger.lease_of(&VmSelector::Uuid(vm.uuid)), Ok(id));
                    assert_eq!(self.ledger.lease(id).map(|l| l.bindings().count()), Ok(0));
                }
                result.is_ok()
            }
            Op::CloseLease { lease } => {
                let id = self.lease(lease);
                let made = self
                    .ledger
                    .lease(id)
                    .map(|l| (l.vm.uuid, self.ledger.files_created_by(l.vm.uuid)));
                let Ok(end) = self.ledger.close_lease(id) else {
                    return false;
                };
                assert!(self.ledger.lease(id).is_err());
                // Files belong to the VM that made them, not to its lease.
                let (uuid, count) = made.expect("the lease was open");
                assert_eq!(self.ledger.files_created_by(uuid), count);
                for name in &end.released {
                    let rec = self.ledger.file(name).expect("released file exists");
                    assert!(rec.owner.is_none(), "released {name} still owned");
                }
                true
            }
            Op::AddFile {
                file: f,
                kind,
                pages,
                creator,
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
                let creator = (creator & 0x80 != 0).then(|| vm(creator & 0x7f));
                let name = file(f);
                let ok = self.ledger.add_file(name.clone(), spec, creator).is_ok();
                if ok {
                    let rec = self.ledger.file(&name).expect("added");
                    assert_eq!(rec.spec, spec);
                    assert!(rec.owner.is_none() && rec.binding_count() == 0);
                }
                ok
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
                let unit_size = match unit & 3 {
                    0 => self.ledger.file(&name).map_or(4096, |r| r.spec.page_size),
                    1 => 4096,
                    2 => 2 << 20,
                    _ => 1,
                };
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
                let was_owned = self.ledger.file(&name).is_ok_and(|r| r.owner.is_some());
                let mut alive = self.is_alive();
                let Ok(sets_owner) = self.ledger.bind(id, &req, &mut alive) else {
                    return false;
                };
                assert_eq!(sets_owner, !was_owned);
                let rec = self.ledger.file(&name).expect("bound file exists");
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
                if let Ok(rec) = self.ledger.file(&binding.file) {
                    assert_eq!(cleared, rec.owner.is_none());
                } else {
                    assert!(!cleared, "owner cleared on a missing file");
                }
                true
            }
            Op::RemoveFile { file: f, operator } => {
                let name = file(f);
                let Ok(dropped) = self.ledger.remove_file(&name, operator & 1 == 1) else {
                    return false;
                };
                assert!(self.ledger.file(&name).is_err(), "{name} still present");
                assert!(dropped.iter().all(|b| b.file == name));
                assert!(
                    self.ledger
                        .leases()
                        .all(|(_, l)| l.bindings().all(|b| b.file != name)),
                    "binding of removed file {name} survives"
                );
                true
            }
            Op::AddHolder {
                file: f,
                pid,
                vm: v,
            } => {
                let name = file(f);
                let pid = u32::from(pid % 8);
                let uuid = vm(v).uuid;
                let through = (v & 0x80 != 0).then(|| self.lease(v));
                let ok = self.ledger.add_holder(&name, pid, uuid, through).is_ok();
                if ok {
                    let rec = self.ledger.file(&name).expect("holder added");
                    assert!(rec.holders().any(|(p, vm, _)| (p, vm) == (pid, uuid)));
                }
                ok
            }
            Op::ClearHolders { file: f } => {
                let name = file(f);
                let ok = self.ledger.clear_holders(&name).is_ok();
                if ok {
                    let rec = self.ledger.file(&name).expect("cleared");
                    assert_eq!(rec.holders().count(), 0);
                }
                ok
            }
            Op::PruneHolders => {
                let mut alive = self.is_alive();
                self.ledger.prune_holders(&mut alive);
                // What remains lives, or came through a lease still open.
                let mut alive = self.is_alive();
                for (_, rec) in self.ledger.files() {
                    assert!(rec.holders().all(|(pid, _, lease)| {
                        alive(pid) || lease.is_some_and(|id| self.ledger.lease(id).is_ok())
                    }));
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
                let Ok(spec) = self.ledger.file(&name).map(|r| r.spec) else {
                    return false;
                };
                let mut alive = self.is_alive();
                let mut bound = 0;
                for i in 0..spec.size / spec.page_size {
                    let req = BindRequest::new(
                        8 + u32::try_from(i).expect("at most 1016 pages"),
                        GuestAddress((1 << 40) + i * spec.page_size),
                        name.clone(),
                        i * spec.page_size,
                        spec.page_size,
                    );
                    match self.ledger.bind(id, &req, &mut alive) {
                        Ok(_) => bound += 1,
                        Err(LedgerError::TooManyBindings { limit, .. }) => {
                            let rec = self.ledger.file(&name).expect("file exists");
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
                let by_uuid: Vec<LeaseId> = self
                    .ledger
                    .leases()
                    .filter(|(_, l)| l.vm.uuid == vm.uuid)
                    .map(|(id, _)| id)
                    .collect();
                let by_name: Vec<LeaseId> = self
                    .ledger
                    .leases()
                    .filter(|(_, l)| l.vm.name == vm.name)
                    .map(|(id, _)| id)
                    .collect();
                assert!(by_uuid.len() <= 1, "two leases for one UUID");
                let found = self.ledger.lease_of(&VmSelector::Uuid(vm.uuid));
                assert_eq!(found.ok(), by_uuid.first().copied(), "lease_of uuid");
                let found = self.ledger.lease_of(&VmSelector::Name(vm.name.clone()));
                match (by_name.as_slice(), found) {
                    ([id], Ok(found)) => assert_eq!(found, *id),
                    ([], Err(LedgerError::UnknownVm(_))) => {}
                    (many, Err(LedgerError::AmbiguousVm { count, .. })) if many.len() > 1 => {
                        assert_eq!(count, many.len());
                    }
                    (many, found) => panic!("lease_of name: {many:?} open, got {found:?}"),
                }
                true
            }
        }
    }
}

/// Runs every property of the `ledger_ops` target on `data`.
pub fn check_ledger(data: &[u8]) {
    let mut harness = Harness::new();
    for op in decode(data) {
        harness.step(op);
    }
}
