//! Every invariant of the ledger, refusal by refusal, plus a random walk.
//! Every refusal is checked to leave the ledger exactly as it was.

use std::fmt::Debug;

use gmem_protocol::wire::{
    BindRequest, GuestAddress, LeaseId, MemoryKind, Name, Uuid, VmId, VmSelector,
    MAX_BINDINGS_PER_FILE,
};
use rustix::io::Errno;

use super::*;
use crate::principal::{Principal, Tie, TieError, TieRules, VmPatterns};

const MIB: u64 = 1 << 20;
const ALICE: u32 = 1000;
const BOB: u32 = 2000;
const ROOT: u32 = 0;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn vm(s: &str) -> VmId {
    VmId::from_name(name(s))
}

fn uuid(s: &str) -> Uuid {
    vm(s).uuid
}

fn memfd_spec(size: u64) -> FileSpec {
    FileSpec {
        size,
        kind: MemoryKind::Memfd,
        page_size: 4096,
    }
}

fn gmem_spec(size: u64) -> FileSpec {
    FileSpec {
        size,
        kind: MemoryKind::GuestMemfd,
        page_size: 4096,
    }
}

fn bind_req(file: &str, slot: u32, gpa: u64, offset: u64, size: u64) -> BindRequest {
    BindRequest::new(slot, GuestAddress(gpa), name(file), offset, size)
}

fn id(raw: u64) -> LeaseId {
    LeaseId::new(raw).unwrap()
}

fn principal(uid: u32) -> Principal {
    Principal {
        uid,
        ..Principal::default()
    }
}

fn uid_tie(uid: u32) -> Tie {
    Tie {
        uid,
        cgroup: None,
        label: None,
    }
}

/// `file` in VM `v`'s namespace.
fn key(v: &str, file: &str) -> FileKey {
    FileKey::vm(uuid(v), name(file))
}

/// `file` in the operators' namespace.
fn ops(file: &str) -> FileKey {
    FileKey::operators(name(file))
}

/// Opens lease `raw` for VM `v` as a client (not an operator) of `uid`,
/// VMs tied by uid alone (the default).
fn open(l: &mut Ledger, raw: u64, v: &str, uid: u32) -> LedgerResult<()> {
    open_as(l, raw, vm(v), uid, false)
}

fn open_as(l: &mut Ledger, raw: u64, vm: VmId, uid: u32, operator: bool) -> LedgerResult<()> {
    let peer = Peer { pid: 0, uid };
    l.open_lease(
        id(raw),
        vm,
        peer,
        &principal(uid),
        &TieRules::default(),
        operator,
    )
}

/// Lease 1 = VM a (Alice) with its file a/f (4 MiB); lease 2 = VM b (Bob),
/// no files.
fn setup() -> Ledger {
    let mut l = Ledger::new();
    open(&mut l, 1, "a", ALICE).unwrap();
    open(&mut l, 2, "b", BOB).unwrap();
    l.add_file(key("a", "f"), memfd_spec(4 * MIB), None)
        .unwrap();
    l
}

/// Everything the ledger holds: files, leases, VMs, names, retired memory.
fn snapshot(l: &Ledger) -> String {
    format!("{l:?}")
}

/// Runs `op`, which must be refused, and checks that the refusal changed
/// nothing and left the ledger consistent.
fn refuse<T: Debug>(
    l: &mut Ledger,
    op: impl FnOnce(&mut Ledger) -> LedgerResult<T>,
) -> LedgerError {
    let before = snapshot(l);
    let err = op(l).expect_err("refused");
    assert_eq!(snapshot(l), before, "refusal {err:?} changed the ledger");
    l.assert_consistent();
    err
}

fn owner_of(l: &Ledger, key: &FileKey) -> Option<(VmId, LeaseId)> {
    l.file(key)
        .unwrap()
        .owner
        .as_ref()
        .map(|o| (o.vm.clone(), o.lease))
}

mod bindings;
mod holders;
mod namespaces;
mod vms;
mod walk;
