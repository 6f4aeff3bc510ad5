//! Between the daemon's types and the journal's plain records.

use gmem_protocol::wire::{GuestAddress, LeaseId, MemoryKind, Name, Uuid, VmId};

use crate::journal::record::{
    BindingRec, FileRec, LeaseRec, MatcherRec, PrincipalRec, RetiredRec, TieRec, VmRec,
};
use crate::ledger::{
    Binding, FileKey, FilePart, FileRecord, FileSpec, LeaseRecord, Retired, VmEntry,
};
use crate::principal::{Matcher, Principal, Tie};

pub(super) fn tie_rec(t: &Tie) -> TieRec {
    let m = |m: &Matcher| match m {
        Matcher::Exact(v) => MatcherRec {
            exact: true,
            text: v.clone(),
        },
        Matcher::Pattern(p) => MatcherRec {
            exact: false,
            text: p.clone(),
        },
    };
    TieRec {
        uid: t.uid,
        cgroup: t.cgroup.as_ref().map(m),
        label: t.label.as_ref().map(m),
    }
}

pub(super) fn tie(r: &TieRec) -> Tie {
    let m = |m: &MatcherRec| {
        if m.exact {
            Matcher::Exact(m.text.clone())
        } else {
            Matcher::Pattern(m.text.clone())
        }
    };
    Tie {
        uid: r.uid,
        cgroup: r.cgroup.as_ref().map(m),
        label: r.label.as_ref().map(m),
    }
}

pub(super) fn principal_rec(p: &Principal) -> PrincipalRec {
    PrincipalRec {
        uid: p.uid,
        cgroup: p.cgroup.clone(),
        label: p.label.clone(),
    }
}

pub(super) fn principal(r: &PrincipalRec) -> Principal {
    Principal {
        uid: r.uid,
        cgroup: r.cgroup.clone(),
        label: r.label.clone(),
    }
}

fn lease_id(raw: u64) -> Option<LeaseId> {
    LeaseId::new(raw)
}

pub(super) fn file_rec(fid: u64, key: &FileKey, f: &FileRecord) -> FileRec {
    FileRec {
        fid,
        vm: key.vm_uuid().map(|u| u.0),
        name: key.name.to_string(),
        size: f.spec.size,
        kind: f.spec.kind.code(),
        page_size: f.spec.page_size,
        depositor: f.depositor().map(LeaseId::get),
        holders: f.holders().map(|(p, l)| (p, l.map(LeaseId::get))).collect(),
    }
}

/// A file part from its record; `None` (with the reason) if it does not
/// decode.
pub(super) fn file_part(r: &FileRec) -> Result<FilePart, String> {
    let name = Name::new(&r.name).map_err(|e| format!("file name {:?}: {e}", r.name))?;
    let key = match r.vm {
        Some(u) => FileKey::vm(Uuid(u), name),
        None => FileKey::operators(name),
    };
    let kind = MemoryKind::try_from(r.kind).map_err(|e| format!("file {}: {e}", r.name))?;
    Ok(FilePart {
        key,
        spec: FileSpec {
            size: r.size,
            kind,
            page_size: r.page_size,
        },
        depositor: r.depositor.and_then(lease_id),
        holders: r
            .holders
            .iter()
            .map(|(p, l)| (*p, l.and_then(lease_id)))
            .collect(),
    })
}

pub(super) fn vm_rec(v: &VmEntry) -> VmRec {
    VmRec {
        uuid: v.vm.uuid.0,
        name: v.vm.name.to_string(),
        tie: tie_rec(&v.tie),
        idle_since: v.idle_since,
    }
}

pub(super) fn vm_id(uuid: [u8; 16], name: &str) -> Result<VmId, String> {
    Ok(VmId {
        uuid: Uuid(uuid),
        name: Name::new(name).map_err(|e| format!("VM name {name:?}: {e}"))?,
    })
}

pub(super) fn lease_rec(id: LeaseId, l: &LeaseRecord, handoff: Option<u32>) -> LeaseRec {
    LeaseRec {
        id: id.get(),
        uuid: l.vm.uuid.0,
        name: l.vm.name.to_string(),
        pid: l.peer.pid,
        uid: l.peer.uid,
        bindings: l
            .bindings()
            .map(|b| BindingRec {
                slot: b.slot,
                gpa: b.gpa.0,
                file: b.file.to_string(),
                offset: b.offset,
                size: b.size,
            })
            .collect(),
        handoff,
    }
}

pub(super) fn bindings(r: &LeaseRec) -> Result<Vec<Binding>, String> {
    r.bindings
        .iter()
        .map(|b| {
            Ok(Binding {
                slot: b.slot,
                gpa: GuestAddress(b.gpa),
                file: Name::new(&b.file).map_err(|e| format!("binding file {:?}: {e}", b.file))?,
                offset: b.offset,
                size: b.size,
            })
        })
        .collect()
}

pub(super) fn retired_rec(r: &Retired) -> RetiredRec {
    RetiredRec {
        tie: r.tie.as_ref().map(tie_rec),
        bytes: r.bytes,
        holders: r.holders().map(|(p, l)| (p, l.map(LeaseId::get))).collect(),
    }
}

pub(super) fn retired(r: &RetiredRec) -> Retired {
    Retired::new(
        r.tie.as_ref().map(tie),
        r.bytes,
        r.holders
            .iter()
            .map(|(p, l)| (*p, l.and_then(lease_id)))
            .collect(),
    )
}
