//! Writes the committed seed corpus of the ledger target:
//! `corpus/ledger_ops/seed-*`.
//!
//!     cargo run --manifest-path backend/gmemd/fuzz/Cargo.toml --example gen-seeds
//!
//! Every seed is a ledger scenario whose operations mostly succeed, so the
//! fuzzer starts deep in the ledger; each is run through the target's check
//! before it is written.

use std::path::Path;

use gmem_fuzz::seeds::{numbered, write_seeds};
use gmem_protocol::wire::{Name, MAX_BINDINGS_PER_FILE};
use gmemd_fuzz::ledger_ops::{self, Harness, Op};

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn ledger_scenarios() -> Vec<(&'static str, Vec<Op>)> {
    // Units for Bind: 0 = the file's page size, 1 = 4 KiB.
    let bind = |lease, slot, gpa, file, offset, size| Op::Bind {
        lease,
        slot,
        gpa,
        file,
        offset,
        size,
        unit: 0,
    };
    let setup = vec![
        Op::AddFile {
            file: 0,
            kind: 0,
            pages: 16,
            creator: 0,
        },
        Op::AddFile {
            file: 1,
            kind: 0,
            pages: 4,
            creator: 0,
        },
        Op::OpenLease { vm: 0, pid: 10 },
        Op::OpenLease { vm: 1, pid: 11 },
    ];
    let with = |ops: &[Op]| [setup.as_slice(), ops].concat();
    vec![
        (
            "bind-unbind-close",
            with(&[
                bind(0, 0, 0, 0, 0, 4),
                bind(0, 1, 8, 0, 4, 4),
                bind(1, 0, 0, 1, 0, 2),
                Op::Unbind { lease: 0, slot: 0 },
                Op::CloseLease { lease: 0 },
                bind(0, 2, 16, 0, 8, 4),
            ]),
        ),
        (
            "refusals",
            with(&[
                bind(0, 0, 0, 0, 0, 4),
                bind(1, 0, 0, 0, 8, 4),           // other VM: NotOwner
                bind(0, 0, 8, 0, 8, 4),           // slot taken
                bind(0, 1, 2, 0, 8, 4),           // guest overlap
                bind(0, 1, 8, 0, 2, 4),           // file range overlap
                bind(0, 1, 8, 0, 14, 5),          // past the end
                Op::OpenLease { vm: 0, pid: 12 }, // VM busy
                Op::RemoveFile {
                    file: 0,
                    operator: 0,
                }, // bound
            ]),
        ),
        (
            "holders",
            with(&[
                Op::AddHolder {
                    file: 0,
                    pid: 3,
                    vm: 0,
                },
                Op::SetAlive { mask: 0b1000 },
                bind(1, 0, 0, 0, 0, 1), // held by a live pid of VM 0
                bind(0, 0, 0, 0, 0, 1),
                Op::Unbind { lease: 0, slot: 0 },
                Op::PruneHolders,
                Op::ClearHolders { file: 0 },
                bind(1, 0, 0, 0, 0, 1),
            ]),
        ),
        (
            "holders-through-a-lease",
            with(&[
                // pid 3 got f0 for VM 2 through the open lease 0, then exited.
                Op::AddHolder {
                    file: 0,
                    pid: 3,
                    vm: 128,
                },
                Op::SetAlive { mask: 0 },
                Op::PruneHolders,
                bind(1, 0, 0, 0, 0, 1), // refused: lease 0 still open
                Op::CloseLease { lease: 0 },
                Op::PruneHolders,
                bind(1, 0, 0, 0, 0, 1),
            ]),
        ),
        (
            "operator-remove",
            with(&[
                bind(0, 0, 0, 0, 0, 2),
                bind(0, 1, 4, 1, 0, 2),
                Op::RemoveFile {
                    file: 0,
                    operator: 1,
                },
                Op::AddFile {
                    file: 0,
                    kind: 0,
                    pages: 2,
                    creator: 0x80,
                },
                bind(0, 0, 0, 0, 0, 2),
                Op::CloseLease { lease: 0 },
            ]),
        ),
        (
            "hugetlb-and-overflow",
            vec![
                Op::AddFile {
                    file: 2,
                    kind: 1,
                    pages: 4,
                    creator: 0,
                },
                Op::OpenLease { vm: 2, pid: 1 },
                bind(0, 0, 0, 2, 0, 2),
                Op::Bind {
                    lease: 0,
                    slot: 1,
                    gpa: 1,
                    file: 2,
                    offset: 2,
                    size: 1,
                    unit: 1, // 4 KiB units: misaligned for 2 MiB pages
                },
                Op::Bind {
                    lease: 0,
                    slot: 1,
                    gpa: 1,
                    file: 2,
                    offset: 2,
                    size: 1,
                    unit: 4, // gpa near 2^64: overflow
                },
                Op::CloseLease { lease: 0 },
            ],
        ),
        (
            "lease-of-names",
            vec![
                Op::OpenLease { vm: 0, pid: 1 },
                Op::OpenLease { vm: 145, pid: 2 }, // uuid v1, name v0
                Op::LeaseOf { vm: 0 },             // name v0: ambiguous
                Op::LeaseOf { vm: 1 },             // uuid v1 found, name v1 unknown
                Op::CloseLease { lease: 0 },
                Op::LeaseOf { vm: 0 },
            ],
        ),
        ("binding-limit", binding_limit()),
        (
            "renamed-vm-lease-churn",
            with(&[
                Op::CloseLease { lease: 0 },
                Op::OpenLease { vm: 6 * 3, pid: 20 }, // uuid v0, name v3
                bind(1, 0, 0, 0, 0, 1),
                Op::CloseLease { lease: 0xff }, // unknown lease
                Op::Unbind { lease: 1, slot: 5 },
                Op::CloseLease { lease: 1 },
            ]),
        ),
    ]
}

/// A file filled up to MAX_BINDINGS_PER_FILE bindings, one more refused,
/// then room made and used.
fn binding_limit() -> Vec<Op> {
    let wide_bind = |slot| Op::Bind {
        lease: 0,
        slot,
        gpa: 200,
        file: 0,
        offset: 100,
        size: 1,
        unit: 32, // wide, in the file's pages
    };
    vec![
        Op::AddFile {
            file: 0,
            kind: 0,
            pages: 128 + 16, // 128 pages
            creator: 0,
        },
        Op::OpenLease { vm: 0, pid: 1 },
        Op::Fill { lease: 0, file: 0 },
        wide_bind(7), // refused: TooManyBindings
        Op::Unbind {
            lease: 0,
            slot: 128 + 8,
        }, // Fill's first binding: page 0 in slot 8
        Op::Bind {
            lease: 0,
            slot: 9,
            gpa: 0,
            file: 0,
            offset: 0,
            size: 1,
            unit: 0,
        }, // page 0 again, now free
        wide_bind(8), // refused again: TooManyBindings
    ]
}

fn main() {
    let scenarios = ledger_scenarios();
    for (label, ops) in &scenarios {
        // Round-trips through the byte layout; report how many steps succeed.
        assert_eq!(
            &ledger_ops::decode(&ledger_ops::encode(ops)),
            ops,
            "{label}"
        );
        let mut harness = Harness::new();
        let accepted = ops.iter().filter(|op| harness.step(**op)).count();
        println!(
            "ledger scenario {label}: {accepted}/{} ops accepted",
            ops.len()
        );
        if *label == "binding-limit" {
            let full = harness
                .ledger
                .file(&name("f0"))
                .expect("f0")
                .binding_count();
            assert_eq!(
                full, MAX_BINDINGS_PER_FILE,
                "{label} does not reach the limit"
            );
        }
    }
    let scenarios = numbered(
        scenarios
            .iter()
            .map(|(l, ops)| (*l, ledger_ops::encode(ops))),
    );
    write_seeds(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ledger_ops"),
        &scenarios,
        ledger_ops::check_ledger,
    );
}
