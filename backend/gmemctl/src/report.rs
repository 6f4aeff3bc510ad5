//! `gmemctl status` output: a table for people, JSON for programs.

use gmem_protocol::wire::{FileStatus, LeaseStatus};
use serde_json::{json, Value};

use gmemd::size::format_size;

/// The JSON document of `gmemctl status --json`.
pub fn status_json(files: &[FileStatus], leases: &[LeaseStatus]) -> Value {
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "name": f.name.as_str(),
                "size": f.size,
                "kind": f.kind.name(),
                "page_size": f.page_size,
                "owner": f.owner.as_ref().map(|o| json!({
                    "uuid": o.vm.uuid.to_string(),
                    "name": o.vm.name.as_str(),
                    "lease": o.lease.get(),
                })),
                "bindings": f.bindings.iter().map(|b| json!({
                    "slot": b.slot,
                    "gpa": b.gpa.0,
                    "offset": b.offset,
                    "size": b.size,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let leases: Vec<Value> = leases
        .iter()
        .map(|l| {
            json!({
                "id": l.lease.get(),
                "uuid": l.vm.uuid.to_string(),
                "name": l.vm.name.as_str(),
                "pid": l.pid,
                "uid": l.uid,
                "bindings": l.bindings,
                "files": l.files,
            })
        })
        .collect();
    json!({ "files": files, "leases": leases })
}

/// The table of `gmemctl status`.
pub fn status_table(files: &[FileStatus], leases: &[LeaseStatus]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>10} {:<12} {:<24} {}\n",
        "FILE", "SIZE", "KIND", "OWNER", "BINDINGS (slot gpa +offset size)"
    ));
    for f in files {
        let owner = f.owner.as_ref().map_or_else(
            || "-".to_owned(),
            |o| format!("{} (lease {})", o.vm.name, o.lease),
        );
        let bindings = if f.bindings.is_empty() {
            "-".to_owned()
        } else {
            f.bindings
                .iter()
                .map(|b| {
                    format!(
                        "{} {:#x} +{:#x} {}",
                        b.slot,
                        b.gpa.0,
                        b.offset,
                        format_size(b.size)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        out.push_str(&format!(
            "{:<24} {:>10} {:<12} {:<24} {}\n",
            f.name.as_str(),
            format_size(f.size),
            f.kind.name(),
            owner,
            bindings
        ));
    }
    if files.is_empty() {
        out.push_str("(no memory files)\n");
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<6} {:<24} {:<36} {:>8} {:>6} {:>8}\n",
        "LEASE", "VM", "UUID", "PID", "UID", "BINDINGS"
    ));
    for l in leases {
        out.push_str(&format!(
            "{:<6} {:<24} {:<36} {:>8} {:>6} {:>8}\n",
            l.lease,
            l.vm.name.as_str(),
            l.vm.uuid.to_string(),
            l.pid,
            l.uid,
            l.bindings
        ));
    }
    if leases.is_empty() {
        out.push_str("(no leases)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use gmem_protocol::wire::{
        BindingStatus, GuestAddress, LeaseId, MemoryKind, Name, OwnerStatus, VmId,
    };

    use super::*;

    #[test]
    fn json_has_the_documented_shape() {
        let vm = VmId::from_name(Name::new("vm1").unwrap());
        let files = vec![FileStatus {
            name: Name::new("ram").unwrap(),
            size: 1 << 20,
            page_size: 4096,
            kind: MemoryKind::Memfd,
            owner: Some(OwnerStatus {
                vm: vm.clone(),
                lease: LeaseId::new(3).unwrap(),
            }),
            bindings: vec![BindingStatus {
                slot: 1,
                gpa: GuestAddress(0),
                offset: 0,
                size: 4096,
            }],
        }];
        let leases = vec![LeaseStatus {
            lease: LeaseId::new(3).unwrap(),
            vm,
            pid: 9,
            uid: 0,
            bindings: 1,
            files: 1,
        }];
        let v = status_json(&files, &leases);
        assert_eq!(v["files"][0]["owner"]["name"], "vm1");
        assert_eq!(v["files"][0]["bindings"][0]["slot"], 1);
        assert_eq!(v["leases"][0]["id"], 3);
        let table = status_table(&files, &leases);
        assert!(table.contains("ram") && table.contains("vm1 (lease 3)"));
        assert!(status_table(&[], &[]).contains("(no memory files)"));
    }
}
