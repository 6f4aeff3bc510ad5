//! Writes the committed seed corpus of the ledger target:
//! `corpus/ledger_ops/seed-*`.
//!
//!     cargo run --manifest-path backend/gmemd/fuzz/Cargo.toml --example gen-seeds
//!
//! Every seed is a ledger scenario whose operations mostly succeed, so the
//! fuzzer starts deep in the ledger; each is run through the target's check
//! before it is written, and each says which of its operations the ledger
//! must accept (`+`) or refuse (`-`), so a seed that drifted from what it
//! was written to reach is caught here.

use std::path::Path;

use gmem_fuzz::seeds::{numbered, write_seeds};
use gmem_protocol::wire::{Name, Uuid, MAX_BINDINGS_PER_FILE};
use gmemd::ledger::FileKey;
use gmemd_fuzz::ledger_ops::{self, Harness, Op};

/// `who` bytes (see `ledger_ops::who`).
const ALICE: u8 = 0; // uid 1000, tied by uid
const BOB: u8 = 1; // uid 2000
const ROOT: u8 = 2; // the operator
/// uid 1000 in cgroup /machine/v0.scope, rules uid+cgroup `/machine/{vm}.scope`.
const QEMU_V0: u8 = 4 | 2 << 6;
/// uid 1000 in cgroup /machine/v1.scope, same rules.
const QEMU_V1: u8 = 8 | 2 << 6;
/// Rules uid+cgroup+label (`/machine/*`, `svirt:*`, v5: `/user`): uid 1000
/// in /machine/v0.scope labelled svirt:c1.
const SVIRT: u8 = 4 | 1 << 4 | 3 << 6;
/// The same rules, uid 1000 in /user labelled svirt:c2.
const SVIRT_USER: u8 = 12 | 2 << 4 | 3 << 6;

/// Namespace bytes (see `ledger_ops::space`).
const OPERATORS: u8 = 6;

/// VM bytes: the UUID of v2 with the name v0, the UUID of v0 with the name
/// v3 (see `ledger_ops::vm`).
const V2_NAMED_V0: u8 = 146;
const V0_NAMED_V3: u8 = 162;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn open(vm: u8, who: u8) -> Op {
    Op::OpenLease { vm, who, pid: 10 }
}

fn add(space: u8, file: u8, pages: u8) -> Op {
    Op::AddFile {
        space,
        file,
        kind: 0,
        pages,
        depositor: 0,
    }
}

/// Bind in the file's page size.
fn bind(lease: u8, slot: u8, gpa: u8, file: u8, offset: u8, size: u8) -> Op {
    Op::Bind {
        lease,
        slot,
        gpa,
        file,
        offset,
        size,
        unit: 0,
    }
}

fn remove(space: u8, file: u8, operator: u8) -> Op {
    Op::RemoveFile {
        space,
        file,
        operator,
    }
}

fn moved(from_space: u8, from_file: u8, to_space: u8, to_file: u8) -> Op {
    Op::MoveFile {
        from_space,
        from_file,
        to_space,
        to_file,
    }
}

/// A scenario: its label, and its operations each with whether the ledger
/// accepts it.
type Scenario = (&'static str, Vec<(Op, bool)>);

fn ledger_scenarios() -> Vec<Scenario> {
    // Lease selectors pick among the open leases by id: with leases of v0
    // (Alice) and v1 (Bob) open, 0 is v0's, 1 is v1's.
    let setup = [
        (open(0, ALICE), true),
        (open(1, BOB), true),
        (add(0, 0, 16), true), // v0/f0
        (add(0, 1, 4), true),  // v0/f1
        (add(1, 0, 4), true),  // v1/f0
    ];
    let with = |ops: &[(Op, bool)]| [setup.as_slice(), ops].concat();
    let (y, n) = (true, false);
    vec![
        (
            "bind-unbind-close",
            with(&[
                (bind(0, 0, 0, 0, 0, 4), y),
                (bind(0, 1, 8, 0, 4, 4), y),
                (bind(1, 0, 0, 0, 0, 2), y), // v1's own f0, same slot and gpa
                (Op::Unbind { lease: 0, slot: 0 }, y),
                (Op::CloseLease { lease: 0 }, y),
                (open(0, ALICE), y), // the relaunch
                (bind(1, 2, 16, 0, 8, 4), y),
            ]),
        ),
        (
            "refusals",
            with(&[
                (bind(0, 0, 0, 0, 0, 4), y),
                (bind(1, 0, 0, 1, 0, 4), n),   // v0's f1 is not v1's
                (bind(0, 0, 8, 0, 8, 4), n),   // slot taken
                (bind(0, 1, 2, 0, 8, 4), n),   // guest overlap
                (bind(0, 1, 8, 0, 2, 4), n),   // file range overlap
                (bind(0, 1, 8, 0, 14, 5), n),  // past the end
                (open(0, ALICE), n),           // VM busy
                (open(0, BOB), n),             // another principal
                (open(V2_NAMED_V0, ALICE), n), // name taken
                (open(V0_NAMED_V3, ALICE), n), // renamed
                (remove(0, 0, 0), n),          // bound
                (add(3, 0, 4), n),             // v3 is unknown
                (add(0, 0, 4), n),             // exists
                (Op::Forget { vm: 0 }, n),     // leased
                (Op::Unbind { lease: 0, slot: 5 }, n),
                (Op::CloseLease { lease: 0xff }, n), // unknown lease
            ]),
        ),
        (
            "holders-and-retired",
            with(&[
                // pid 3 got v0/f0 and v0/f1 through lease 1 (v0's).
                (
                    Op::AddHolder {
                        space: 0,
                        file: 0,
                        pid: 3,
                        lease: 0x80,
                    },
                    y,
                ),
                (
                    Op::AddHolder {
                        space: 0,
                        file: 1,
                        pid: 3,
                        lease: 0x80,
                    },
                    y,
                ),
                // pid 4 got v1/f0 through lease 2 (v1's), which stays open.
                (
                    Op::AddHolder {
                        space: 1,
                        file: 0,
                        pid: 4,
                        lease: 0x81,
                    },
                    y,
                ),
                (remove(0, 0, 0), y), // retired, charged to Alice
                (Op::ReplaceInode { space: 0, file: 1 }, y), // scrubbed: retired too
                (Op::PruneHolders, y), // pid 3 is gone, but lease 1 is open
                (Op::CloseLease { lease: 0 }, y),
                (Op::SetAlive { mask: 0b1000 }, y),
                (Op::PruneHolders, y), // lease 1 is closed, but pid 3 lives
                (Op::SetAlive { mask: 0 }, y),
                (Op::PruneHolders, y), // both gone: freed
                (Op::CloseLease { lease: 0 }, y),
                (Op::PruneHolders, y),
            ]),
        ),
        (
            "operator-remove",
            with(&[
                (bind(0, 0, 0, 0, 0, 2), y),
                (bind(0, 1, 4, 1, 0, 2), y),
                (remove(0, 0, 1), y), // drops the binding
                (add(0, 0, 2), y),
                (bind(0, 0, 0, 0, 0, 2), y),
                (Op::CloseLease { lease: 0 }, y),
                (remove(OPERATORS, 0, 1), n),
            ]),
        ),
        (
            "hugetlb-and-overflow",
            vec![
                (open(2, ALICE), y),
                (
                    Op::AddFile {
                        space: 2,
                        file: 2,
                        kind: 1,
                        pages: 4,
                        depositor: 0,
                    },
                    y,
                ),
                (bind(0, 0, 0, 2, 0, 2), y),
                (
                    Op::Bind {
                        lease: 0,
                        slot: 1,
                        gpa: 1,
                        file: 2,
                        offset: 2,
                        size: 1,
                        unit: 1, // 4 KiB units: misaligned for 2 MiB pages
                    },
                    n,
                ),
                (
                    Op::Bind {
                        lease: 0,
                        slot: 1,
                        gpa: 1,
                        file: 2,
                        offset: 2,
                        size: 1,
                        unit: 4, // gpa near 2^64: overflow
                    },
                    n,
                ),
                (Op::CloseLease { lease: 0 }, y),
            ],
        ),
        (
            "ties-by-cgroup-and-label",
            vec![
                (open(0, QEMU_V0), y),
                (add(0, 0, 4), y),
                (Op::CloseLease { lease: 0 }, y),
                (open(0, QEMU_V1), n), // v1's QEMU is not v0
                (open(1, QEMU_V0), n), // nor v0's v1 (tie mismatch)
                (open(1, QEMU_V1), y),
                (open(0, ROOT), y), // operators are admitted
                (Op::LeaseOf { vm: 0 }, y),
                (open(2, SVIRT), y),
                (open(5, SVIRT), n), // v5's own pattern is /user
                (open(5, SVIRT_USER), y),
                (open(4, ALICE), n), // v4 is reserved for uid 2000
                (open(4, BOB), y),
                (Op::LeaseOf { vm: V2_NAMED_V0 }, y),
            ],
        ),
        ("binding-limit", binding_limit()),
        (
            "move-and-forget",
            with(&[
                (add(OPERATORS, 2, 4), y),
                (moved(OPERATORS, 2, 1, 2), y), // a blank file handed to v1
                (moved(0, 1, 1, 1), y),         // v0's file transferred to v1
                (moved(1, 1, OPERATORS, 3), y), // and back to the operators
                (bind(0, 0, 0, 0, 0, 2), y),
                (moved(0, 0, 1, 3), n),    // bound
                (moved(1, 0, 1, 2), n),    // exists
                (moved(1, 0, 3, 0), n),    // v3 is unknown
                (moved(4, 0, 1, 3), n),    // no such file
                (Op::Forget { vm: 0 }, n), // leased
                (Op::CloseLease { lease: 0 }, y),
                (Op::Forget { vm: V2_NAMED_V0 }, y), // by name: v0
                (open(0, BOB), y),                   // v0 is free for anyone
                (Op::LeaseOf { vm: 0 }, y),
            ]),
        ),
        (
            "untie-and-reuse",
            with(&[
                (remove(1, 0, 0), y),
                (Op::CloseLease { lease: 1 }, y), // v1's last file and lease
                (open(1, ALICE), y),              // v1 is Alice's now
                (Op::CloseLease { lease: 0 }, y), // v0 keeps its files
                (open(0, BOB), n),
                (open(V2_NAMED_V0, BOB), n),
                (open(0, ALICE), y),
            ]),
        ),
        (
            "guest-memfd",
            with(&[
                (
                    Op::AddFile {
                        space: 0,
                        file: 3,
                        kind: 4,
                        pages: 4,
                        depositor: 0x80, // lease v0
                    },
                    y,
                ),
                (bind(1, 0, 0, 3, 0, 1), n), // v1 has no f3
                (bind(0, 0, 0, 3, 0, 1), y),
                (moved(0, 3, 1, 3), n), // bound
                (Op::CloseLease { lease: 0 }, y),
                (moved(0, 3, 1, 3), n), // a guest_memfd never moves
                (open(0, ALICE), y),
                (bind(1, 0, 0, 3, 0, 1), n), // another lease of v0
            ]),
        ),
    ]
}

/// A file filled up to MAX_BINDINGS_PER_FILE bindings, one more refused,
/// then room made and used.
fn binding_limit() -> Vec<(Op, bool)> {
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
        (open(0, ALICE), true),
        (add(0, 0, 128 + 16), true), // 128 pages
        (Op::Fill { lease: 0, file: 0 }, true),
        (wide_bind(7), false), // TooManyBindings
        (
            Op::Unbind {
                lease: 0,
                slot: 128 + 8,
            },
            true,
        ), // Fill's first binding: page 0 in slot 8
        (bind(0, 9, 0, 0, 0, 1), true), // page 0 again, now free
        (wide_bind(8), false), // TooManyBindings again
    ]
}

fn main() {
    let scenarios = ledger_scenarios();
    for (label, steps) in &scenarios {
        let ops: Vec<Op> = steps.iter().map(|(op, _)| *op).collect();
        // Round-trips through the byte layout.
        assert_eq!(
            ledger_ops::decode(&ledger_ops::encode(&ops)),
            ops,
            "{label}"
        );
        let mut harness = Harness::new();
        for (i, (op, expected)) in steps.iter().enumerate() {
            let accepted = harness.step(*op);
            assert_eq!(
                accepted, *expected,
                "{label}: step {i} {op:?} accepted {accepted}, expected {expected}"
            );
        }
        println!("ledger scenario {label}: {} ops as expected", ops.len());
        if *label == "binding-limit" {
            let key = FileKey::vm(Uuid::from_name("v0"), name("f0"));
            let full = harness.ledger.file(&key).expect("v0/f0").binding_count();
            assert_eq!(
                full, MAX_BINDINGS_PER_FILE,
                "{label} does not reach the limit"
            );
        }
    }
    let scenarios = numbered(scenarios.iter().map(|(label, steps)| {
        let ops: Vec<Op> = steps.iter().map(|(op, _)| *op).collect();
        (*label, ledger_ops::encode(&ops))
    }));
    write_seeds(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ledger_ops"),
        &scenarios,
        ledger_ops::check_ledger,
    );
}
