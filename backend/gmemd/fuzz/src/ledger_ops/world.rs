//! The small world operations are mapped onto: VMs, namespaces, files, principals, tie rules.

use gmem_protocol::wire::{LeaseId, Name, Uuid, VmId};
use gmemd::ledger::{FileKey, Space};
use gmemd::principal::{Principal, TieRules, VmPatterns};

/// File `f0`..`f3`.
pub fn file(b: u8) -> Name {
    Name::new(&format!("f{}", b % 4)).expect("valid name")
}

/// VM `v0`..`v5`. Below 128 the name matches the UUID's; from 128 on the
/// name is chosen separately, so one UUID can come with another's name.
pub fn vm(b: u8) -> VmId {
    let id = b % 6;
    let name_id = if b < 128 { id } else { (b / 6) % 6 };
    VmId {
        uuid: Uuid::from_name(&format!("v{id}")),
        name: Name::new(&format!("v{name_id}")).expect("valid name"),
    }
}

/// Namespace: modulo 7, 0..=5 VM `v0`..`v5`'s (by UUID), 6 the operators'.
pub fn space(b: u8) -> Space {
    match b % 7 {
        6 => Space::Operators,
        n => Space::Vm(vm(n).uuid),
    }
}

/// `file(f)` in `space(s)`.
pub fn key(s: u8, f: u8) -> FileKey {
    FileKey {
        space: space(s),
        name: file(f),
    }
}

/// Uid 0 is the operator.
pub(super) const OPERATOR: u32 = 0;

/// Who connects, and under which rules: bits 0–1 the uid (1000, 2000, 0 =
/// operator, 1000), bits 2–3 the cgroup (none, `/machine/v0.scope`,
/// `/machine/v1.scope`, `/user`), bits 4–5 the label (none, `svirt:c1`,
/// `svirt:c2`, `unconfined`), bits 6–7 the rules (see [`rules`]).
pub fn who(b: u8) -> (Principal, TieRules) {
    let uid = [1000, 2000, OPERATOR, 1000][usize::from(b & 3)];
    let cgroup = [
        None,
        Some("/machine/v0.scope"),
        Some("/machine/v1.scope"),
        Some("/user"),
    ][usize::from(b >> 2 & 3)];
    let label =
        [None, Some("svirt:c1"), Some("svirt:c2"), Some("unconfined")][usize::from(b >> 4 & 3)];
    let principal = Principal {
        uid,
        cgroup: cgroup.map(str::to_owned),
        label: label.map(str::to_owned),
    };
    (principal, rules(b >> 6))
}

/// Tie rules, modulo 4: by uid, with VM `v4` reserved for uid 2000; uid
/// and exact cgroup; uid and cgroup `/machine/{vm}.scope`; uid, cgroup
/// `/machine/*` and label `svirt:*`, with VM `v5`'s own cgroup pattern
/// `/user`.
pub fn rules(b: u8) -> TieRules {
    let mode = ["uid", "uid+cgroup", "uid+cgroup", "uid+cgroup+label"][usize::from(b % 4)];
    let mut rules = TieRules {
        mode: mode.parse().expect("valid mode"),
        ..TieRules::default()
    };
    match b % 4 {
        0 => {
            rules.vms.insert(
                Name::new("v4").expect("valid name"),
                VmPatterns {
                    uid: Some(2000),
                    ..VmPatterns::default()
                },
            );
        }
        2 => rules.cgroup_pattern = Some("/machine/{vm}.scope".into()),
        3 => {
            rules.cgroup_pattern = Some("/machine/*".into());
            rules.label_pattern = Some("svirt:*".into());
            rules.vms.insert(
                Name::new("v5").expect("valid name"),
                VmPatterns {
                    cgroup: Some("/user".into()),
                    ..VmPatterns::default()
                },
            );
        }
        _ => {}
    }
    rules
}

/// Retired memory as the harness models it: who pays, how much, and who
/// may still hold it (pid, lease it came through).
pub(super) type Holders = Vec<(u32, Option<LeaseId>)>;
