//! `gmemctl status` output: a table for people, JSON for programs.
//!
//! A daemon with feature `VM_SCOPE` lists every file with its namespace
//! ([`Files::Scoped`]): the table then has a `NAMESPACE` column (the VM's
//! name, `-` for an operators' file) and an `ORPHAN` column (for a file of
//! a VM that has no lease: how long ago its last lease ended, e.g.
//! `3m12s`), and each JSON file gains `"vm"` (`{"uuid", "name"}`, `null`
//! for an operators' file) and `"orphan_secs"` (seconds, `null` unless the
//! VM has no lease). An older daemon has one namespace for all
//! ([`Files::Plain`]): neither the columns nor the keys appear.
//!
//! A daemon that reports itself (STATUS section 3) gets a first line
//! saying since when it serves, how many restarts it survived and what it
//! recovered ([`crate::daemon::daemon_line`]), and a JSON `"daemon"` object
//! (`{pid, restarts, born, started, files, leases, recovered}`, times in
//! UNIX seconds); from an older daemon, no line and `"daemon": null`.
//!
//! A daemon with feature `PREFAULT` also lists its warm pools and the files
//! it is populating: a line each before the table, and JSON `"pools"`
//! (`{size, kind, count, ready, filling, ready_bytes, filling_populated}`)
//! and `"prefaults"` (`{name, vm_uuid, size, kind, populated, state,
//! errno}`, state `prefaulting`, `populated` or `failed`); empty lists from
//! an older daemon.

use gmem_protocol::wire::{
    DaemonStatus, FileStatus, FillState, FillStatus, FillSubject, LeaseStatus, ScopedFileStatus,
    VmId,
};
use serde_json::{json, Value};

use crate::daemon::{daemon_json, daemon_line, unix_now};

use gmemd::size::format_size;

/// The memory files of a status, as the daemon could tell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// With their namespaces (the daemon has `VM_SCOPE`).
    Scoped(Vec<ScopedFileStatus>),
    /// Without (an older daemon: one namespace for every file).
    Plain(Vec<FileStatus>),
}

/// What `gmemctl status` shows: the daemon, files and leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The daemon itself, when it can say (`None`: an older daemon).
    pub daemon: Option<DaemonStatus>,
    /// Every file the caller may see.
    pub files: Files,
    /// Every lease the caller may see.
    pub leases: Vec<LeaseStatus>,
    /// Files being populated and the warm pools (empty from a daemon
    /// without `PREFAULT`).
    pub memory: Vec<FillStatus>,
}

/// Where a file lives, for one row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space<'a> {
    /// Unknown: the daemon has no namespaces.
    Unknown,
    /// The operators' namespace.
    Operators,
    /// A VM's namespace; `orphan_secs` is set when the VM has no lease.
    Vm {
        vm: &'a VmId,
        orphan_secs: Option<u64>,
    },
}

/// One file with its namespace, from either kind of listing.
struct Row<'a> {
    file: &'a FileStatus,
    space: Space<'a>,
}

impl Status {
    /// Whether the files come with their namespaces.
    pub fn is_scoped(&self) -> bool {
        matches!(self.files, Files::Scoped(_))
    }

    fn rows(&self) -> Vec<Row<'_>> {
        match &self.files {
            Files::Plain(files) => files
                .iter()
                .map(|file| Row {
                    file,
                    space: Space::Unknown,
                })
                .collect(),
            Files::Scoped(files) => files
                .iter()
                .map(|f| Row {
                    file: &f.file,
                    space: match &f.vm {
                        None => Space::Operators,
                        Some(vm) => Space::Vm {
                            vm,
                            orphan_secs: (!self.has_lease(vm)).then_some(f.idle_secs),
                        },
                    },
                })
                .collect(),
        }
    }

    /// Whether `vm` has a lease. The lease list, not `idle_secs == 0`,
    /// decides: a lease that ended less than a second ago also reads 0.
    fn has_lease(&self, vm: &VmId) -> bool {
        self.leases.iter().any(|l| l.vm.uuid == vm.uuid)
    }
}

/// An orphan's age, the two largest units: `42s`, `3m12s`, `5h07m`, `2d03h`.
pub fn format_age(secs: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MINUTE, s % MINUTE),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

/// The JSON document of `gmemctl status --json`.
pub fn status_json(status: &Status) -> Value {
    let files: Vec<Value> = status
        .rows()
        .iter()
        .map(|row| {
            let f = row.file;
            let mut entry = json!({
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
                    "confirmed": b.confirmed,
                })).collect::<Vec<_>>(),
            });
            let space = match row.space {
                Space::Unknown => None,
                Space::Operators => Some((Value::Null, Value::Null)),
                Space::Vm { vm, orphan_secs } => Some((
                    json!({ "uuid": vm.uuid.to_string(), "name": vm.name.as_str() }),
                    json!(orphan_secs),
                )),
            };
            if let (Some((vm, orphan)), Some(map)) = (space, entry.as_object_mut()) {
                map.insert("vm".to_owned(), vm);
                map.insert("orphan_secs".to_owned(), orphan);
            }
            entry
        })
        .collect();
    let leases: Vec<Value> = status
        .leases
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
    let (pools, prefaults) = memory_json(&status.memory);
    json!({
        "daemon": status.daemon.as_ref().map(daemon_json),
        "files": files,
        "leases": leases,
        "pools": pools,
        "prefaults": prefaults,
    })
}

/// The warm pools and the prefaults of `gmemctl status --json`.
fn memory_json(memory: &[FillStatus]) -> (Vec<Value>, Vec<Value>) {
    let mut pools = Vec::new();
    let mut prefaults = Vec::new();
    for m in memory {
        match &m.subject {
            FillSubject::Pool {
                ready,
                count,
                filling,
            } => pools.push(json!({
                "size": m.size,
                "kind": m.kind.name(),
                "count": count,
                "ready": ready,
                "filling": filling,
                "ready_bytes": m.size * u64::from(*ready),
                "filling_populated": m.populated,
            })),
            FillSubject::File { uuid, name } => {
                let (state, errno) = match m.state {
                    FillState::Prefaulting => ("prefaulting", None),
                    FillState::Populated => ("populated", None),
                    FillState::Failed(e) => ("failed", Some(e)),
                    FillState::Pool => ("pool", None),
                };
                prefaults.push(json!({
                    "name": name.as_str(),
                    "vm_uuid": uuid.map(|u| u.to_string()),
                    "size": m.size,
                    "kind": m.kind.name(),
                    "populated": m.populated,
                    "state": state,
                    "errno": errno,
                }));
            }
        }
    }
    (pools, prefaults)
}

/// Lines of the table for the warm pools and files being populated.
fn memory_lines(memory: &[FillStatus]) -> String {
    let mut out = String::new();
    for m in memory {
        match &m.subject {
            FillSubject::Pool {
                ready,
                count,
                filling,
            } => out.push_str(&format!(
                "pool {} {}: {ready}/{count} ready{}\n",
                format_size(m.size),
                m.kind,
                if *filling > 0 {
                    format!(", filling one ({} done)", format_size(m.populated))
                } else {
                    String::new()
                }
            )),
            FillSubject::File { name, .. } if m.state == FillState::Prefaulting => {
                out.push_str(&format!(
                    "prefaulting {name}: {} of {}\n",
                    format_size(m.populated),
                    format_size(m.size)
                ));
            }
            FillSubject::File { name, .. } => {
                if let FillState::Failed(e) = m.state {
                    out.push_str(&format!(
                        "prefault of {name} stopped: {}\n",
                        std::io::Error::from_raw_os_error(i32::try_from(e).unwrap_or(i32::MAX))
                    ));
                }
            }
        }
    }
    out
}

/// The table of `gmemctl status`, after the daemon's line (uptime as of
/// now) when it reports itself.
pub fn status_table(status: &Status) -> String {
    let scoped = status.is_scoped();
    let mut out = String::new();
    if let Some(daemon) = &status.daemon {
        out.push_str(&daemon_line(daemon, unix_now()));
        out.push_str("\n\n");
    }
    let memory = memory_lines(&status.memory);
    if !memory.is_empty() {
        out.push_str(&memory);
        out.push('\n');
    }
    let row = |out: &mut String, cells: [&str; 7]| {
        let [space, file, size, kind, owner, orphan, bindings] = cells;
        if scoped {
            out.push_str(&format!("{space:<16} "));
        }
        out.push_str(&format!("{file:<24} {size:>10} {kind:<12} {owner:<24} "));
        if scoped {
            out.push_str(&format!("{orphan:<8} "));
        }
        out.push_str(bindings);
        out.push('\n');
    };
    row(
        &mut out,
        [
            "NAMESPACE",
            "FILE",
            "SIZE",
            "KIND",
            "OWNER",
            "ORPHAN",
            "BINDINGS (slot gpa +offset size, * confirmed by QEMU)",
        ],
    );
    let rows = status.rows();
    for r in &rows {
        let f = r.file;
        let owner = f.owner.as_ref().map_or_else(
            || "-".to_owned(),
            |o| format!("{} (lease {})", o.vm.name, o.lease),
        );
        let (space, orphan) = match r.space {
            Space::Unknown | Space::Operators => ("-", None),
            Space::Vm { vm, orphan_secs } => (vm.name.as_str(), orphan_secs.map(format_age)),
        };
        let bindings = if f.bindings.is_empty() {
            "-".to_owned()
        } else {
            f.bindings
                .iter()
                .map(|b| {
                    format!(
                        "{} {:#x} +{:#x} {}{}",
                        b.slot,
                        b.gpa.0,
                        b.offset,
                        format_size(b.size),
                        if b.confirmed { " *" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        row(
            &mut out,
            [
                space,
                f.name.as_str(),
                &format_size(f.size),
                f.kind.name(),
                &owner,
                orphan.as_deref().unwrap_or("-"),
                &bindings,
            ],
        );
    }
    if rows.is_empty() {
        out.push_str("(no memory files)\n");
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<6} {:<24} {:<36} {:>8} {:>6} {:>8}\n",
        "LEASE", "VM", "UUID", "PID", "UID", "BINDINGS"
    ));
    for l in &status.leases {
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
    if status.leases.is_empty() {
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

    fn vm(name: &str) -> VmId {
        VmId::from_name(Name::new(name).unwrap())
    }

    fn file(name: &str, owner: Option<(&VmId, u64)>, bound: bool) -> FileStatus {
        FileStatus {
            name: Name::new(name).unwrap(),
            size: 1 << 20,
            page_size: 4096,
            kind: MemoryKind::Memfd,
            owner: owner.map(|(vm, lease)| OwnerStatus {
                vm: vm.clone(),
                lease: LeaseId::new(lease).unwrap(),
            }),
            bindings: if bound {
                vec![BindingStatus {
                    confirmed: false,
                    slot: 1,
                    gpa: GuestAddress(0),
                    offset: 0,
                    size: 4096,
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn lease(vm: &VmId, id: u64) -> LeaseStatus {
        LeaseStatus {
            lease: LeaseId::new(id).unwrap(),
            vm: vm.clone(),
            pid: 9,
            uid: 0,
            bindings: 1,
            files: 1,
        }
    }

    /// vm1 runs (lease 3) with its bound `ram`; vm2's lease ended 192 s
    /// ago, leaving `disk.ram`; `pool` is an operators' file.
    fn scoped() -> Status {
        let (vm1, vm2) = (vm("vm1"), vm("vm2"));
        Status {
            daemon: None,
            files: Files::Scoped(vec![
                ScopedFileStatus {
                    file: file("ram", Some((&vm1, 3)), true),
                    vm: Some(vm1.clone()),
                    idle_secs: 0,
                },
                ScopedFileStatus {
                    file: file("disk.ram", None, false),
                    vm: Some(vm2),
                    idle_secs: 192,
                },
                ScopedFileStatus {
                    file: file("pool", None, false),
                    vm: None,
                    idle_secs: 0,
                },
            ]),
            leases: vec![lease(&vm1, 3)],
            memory: Vec::new(),
        }
    }

    /// The table row of file `name` (its first line containing it).
    fn table_row<'a>(table: &'a str, name: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
    }

    #[test]
    fn plain_json_has_the_documented_shape() {
        let vm1 = vm("vm1");
        let status = Status {
            daemon: None,
            files: Files::Plain(vec![file("ram", Some((&vm1, 3)), true)]),
            leases: vec![lease(&vm1, 3)],
            memory: Vec::new(),
        };
        let v = status_json(&status);
        assert_eq!(v["files"][0]["name"], "ram");
        assert_eq!(v["files"][0]["owner"]["name"], "vm1");
        assert_eq!(v["files"][0]["owner"]["lease"], 3);
        assert_eq!(v["files"][0]["bindings"][0]["slot"], 1);
        assert_eq!(v["leases"][0]["id"], 3);
        assert_eq!(v["leases"][0]["uuid"], vm1.uuid.to_string());
        // No namespaces known: no keys that would claim one.
        assert!(v["files"][0].get("vm").is_none());
        assert!(v["files"][0].get("orphan_secs").is_none());
        // An older daemon does not report itself.
        assert!(v["daemon"].is_null());
    }

    #[test]
    fn a_daemon_that_reports_itself_heads_table_and_json() {
        let mut status = scoped();
        status.daemon = Some(DaemonStatus {
            pid: 1234,
            restarts: 3,
            born: 1_796_086_800,
            started: 1_796_093_920,
            files: 3,
            leases: 1,
            recovered: "3 files, 1 lease".to_owned(),
        });
        let table = status_table(&status);
        let mut lines = table.lines();
        let first = lines.next().unwrap();
        assert!(
            first.starts_with("gmemd pid 1234, serving since 2026-12-01 02:58:40 UTC (up "),
            "{table}"
        );
        assert!(
            first.ends_with(
                "state since 2026-12-01 01:00:00 UTC, 3 restart(s) survived; \
                 last recovery: 3 files, 1 lease"
            ),
            "{table}"
        );
        assert_eq!(lines.next(), Some(""));
        assert!(lines.next().unwrap().starts_with("NAMESPACE "), "{table}");
        let v = status_json(&status);
        assert_eq!(v["daemon"]["pid"], 1234);
        assert_eq!(v["daemon"]["restarts"], 3);
        assert_eq!(v["daemon"]["started"], 1_796_093_920u64);
        assert_eq!(v["daemon"]["recovered"], "3 files, 1 lease");
        assert_eq!(v["files"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn plain_table_keeps_the_old_columns() {
        let vm1 = vm("vm1");
        let status = Status {
            daemon: None,
            files: Files::Plain(vec![file("ram", Some((&vm1, 3)), true)]),
            leases: vec![lease(&vm1, 3)],
            memory: Vec::new(),
        };
        let table = status_table(&status);
        let header = table.lines().next().unwrap();
        assert!(header.starts_with("FILE "), "{table}");
        assert!(!header.contains("NAMESPACE") && !header.contains("ORPHAN"));
        assert!(table_row(&table, "ram").contains("vm1 (lease 3)"));
        assert!(table_row(&table, "ram").contains("1 0x0 +0x0 4 KiB"));
        let empty = status_table(&Status {
            daemon: None,
            files: Files::Plain(Vec::new()),
            leases: Vec::new(),
            memory: Vec::new(),
        });
        assert!(empty.contains("(no memory files)") && empty.contains("(no leases)"));
    }

    #[test]
    fn scoped_json_names_namespaces_and_orphans() {
        let v = status_json(&scoped());
        let files = v["files"].as_array().unwrap();
        assert_eq!(files.len(), 3);
        // A running VM's file: its namespace, not an orphan.
        assert_eq!(files[0]["vm"]["name"], "vm1");
        assert_eq!(files[0]["vm"]["uuid"], vm("vm1").uuid.to_string());
        assert_eq!(files[0]["orphan_secs"], Value::Null);
        // A VM without a lease: its files are orphans of that age.
        assert_eq!(files[1]["name"], "disk.ram");
        assert_eq!(files[1]["vm"]["name"], "vm2");
        assert_eq!(files[1]["orphan_secs"], 192);
        // An operators' file: no VM, never an orphan.
        assert_eq!(files[2]["name"], "pool");
        assert!(files[2].get("vm").is_some_and(Value::is_null));
        assert!(files[2].get("orphan_secs").is_some_and(Value::is_null));
    }

    #[test]
    fn scoped_table_has_namespace_and_orphan_columns() {
        let table = status_table(&scoped());
        let header = table.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE "), "{table}");
        assert!(header.contains(" ORPHAN "), "{table}");
        let words = |name| {
            table_row(&table, name)
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        // NAMESPACE FILE SIZE KIND OWNER ORPHAN BINDINGS, split in words.
        let ram = words("ram");
        assert_eq!(ram[..2], ["vm1", "ram"]);
        assert!(table_row(&table, "ram").contains("vm1 (lease 3)"));
        assert_eq!(ram[ram.len() - 6..], ["-", "1", "0x0", "+0x0", "4", "KiB"]);
        let disk = words("disk.ram");
        assert_eq!(disk[..2], ["vm2", "disk.ram"]);
        assert_eq!(disk[disk.len() - 2..], ["3m12s", "-"]);
        let pool = words("pool");
        assert_eq!(pool[..2], ["-", "pool"]);
        assert_eq!(pool[pool.len() - 3..], ["-", "-", "-"]);
    }

    #[test]
    fn a_lease_not_idle_secs_decides_who_is_an_orphan() {
        let mut status = scoped();
        // vm2's last lease ended under a second ago: 0 s, still an orphan.
        if let Files::Scoped(files) = &mut status.files {
            files[1].idle_secs = 0;
        }
        assert_eq!(status_json(&status)["files"][1]["orphan_secs"], 0);
        // vm2 leased again: not an orphan, whatever idle_secs says.
        status.leases.push(lease(&vm("vm2"), 4));
        assert_eq!(status_json(&status)["files"][1]["orphan_secs"], Value::Null);
        let table = status_table(&status);
        let disk: Vec<_> = table_row(&table, "disk.ram").split_whitespace().collect();
        assert_eq!(disk[disk.len() - 2..], ["-", "-"]);
    }

    #[test]
    fn ages_read_at_a_glance() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (192, "3m12s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (5 * 3600 + 7 * 60 + 59, "5h07m"),
            (86_399, "23h59m"),
            (2 * 86_400 + 3 * 3600, "2d03h"),
            (400 * 86_400, "400d00h"),
            (u64::MAX, "213503982334601d07h"),
        ] {
            assert_eq!(format_age(secs), text, "{secs}");
        }
    }
}
