//! Writes the committed seed corpora: `corpus/ledger_ops/seed-*` and
//! `corpus/vhost_filter/seed-*`.
//!
//!     cargo run --manifest-path backend/gmemd/fuzz/Cargo.toml --example gen-seeds
//!
//! Every ledger seed is a scenario whose operations mostly succeed, so the
//! fuzzer starts deep in the ledger; each is run through the target's check
//! before it is written, and each says which of its operations the ledger
//! must accept (`+`) or refuse (`-`), so a seed that drifted from what it
//! was written to reach is caught here. Every vhost_filter seed is a
//! QEMU-like message sequence, checked the same way against the number of
//! messages the filter must forward and refuse and how it must end.

use std::path::Path;

use gmem_fuzz::seeds::{numbered, write_seeds};
use gmem_protocol::wire::{Name, Uuid, MAX_BINDINGS_PER_FILE};
use gmemd::ledger::FileKey;
use gmemd_fuzz::ledger_ops::{self, Harness, Op};
use gmemd_fuzz::vhost_filter::{self as vf, End, FdKind, Msg, Summary};

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
    write_vhost_filter_seeds();
}

/// 32 bytes of a memory region.
fn vf_region(gpa: u64, size: u64, offset: u64) -> Vec<u8> {
    let user = 0x7f00_0000_0000u64.wrapping_add(gpa);
    [gpa, size, user, offset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// SET_MEM_TABLE with `regions` (gpa, size, offset), one fd each.
fn vf_table(flags: u32, regions: &[(u64, u64, u64)], fds: &[u8]) -> Msg {
    let mut payload = u32::try_from(regions.len()).unwrap().to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 4]);
    for &(gpa, size, offset) in regions {
        payload.extend(vf_region(gpa, size, offset));
    }
    Msg::new(vf::SET_MEM_TABLE, flags, payload).with_fds(fds)
}

/// ADD_MEM_REG / REM_MEM_REG of one region.
fn vf_single(request: u32, flags: u32, (gpa, size, offset): (u64, u64, u64), fds: &[u8]) -> Msg {
    let mut payload = vec![0; 8];
    payload.extend(vf_region(gpa, size, offset));
    Msg::new(request, flags, payload).with_fds(fds)
}

fn vf_u64(request: u32, value: u64) -> Msg {
    Msg::new(request, vf::VERSION_1, value.to_le_bytes().to_vec())
}

/// SET_VRING_ADDR of ring `index`: index, flags, then four addresses.
fn vf_vring_addr(index: u32) -> Msg {
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend_from_slice(&0u32.to_le_bytes());
    for addr in [0x7f00_0000_1000u64, 0x7f00_0000_2000, 0x7f00_0000_3000, 0] {
        payload.extend_from_slice(&addr.to_le_bytes());
    }
    Msg::new(9, vf::VERSION_1, payload)
}

/// SET_VRING_NUM / SET_VRING_BASE / SET_VRING_ENABLE: index and a value.
fn vf_vring_state(request: u32, index: u32, value: u32) -> Msg {
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend_from_slice(&value.to_le_bytes());
    Msg::new(request, vf::VERSION_1, payload)
}

fn write_vhost_filter_seeds() {
    const V1: u32 = vf::VERSION_1;
    const ACK: u32 = vf::VERSION_1 | vf::NEED_REPLY;
    const MB: u64 = 0x10_0000;
    // Memfds the judge accepts, one it refuses, a pipe (an eventfd's stand-in).
    let own8 = vf::spec(FdKind::Own, 8, false);
    let own16 = vf::spec(FdKind::Own, 16, false);
    let own4_odd = vf::spec(FdKind::Own, 4, true);
    let foreign = vf::spec(FdKind::Foreign, 8, false);
    let pipe = vf::spec(FdKind::Pipe, 0, false);
    let page = vf::PAGE;
    let get_features = Msg::new(1, V1, Vec::new());
    let handshake = vec![
        get_features.clone(),
        vf_u64(2, 1 << 32 | 1 << 30),
        Msg::new(3, V1, Vec::new()),
        Msg::new(15, V1, Vec::new()),
        vf_u64(16, 0x3 | 1 << 15),
        Msg::new(36, V1, Vec::new()),
    ];
    let with = |msgs: Vec<Msg>| [handshake.clone(), msgs].concat();
    let summary = |forwarded, refused, replies, end| Summary {
        forwarded,
        refused,
        replies,
        end,
    };
    let seeds: Vec<(&str, Vec<Msg>, Summary)> = vec![
        (
            "mem-table-and-rings",
            with(vec![
                vf_table(ACK, &[(0, 8 * page, 0), (MB, 8 * page, 0)], &[own8, own16]),
                vf_vring_state(8, 0, 256),
                vf_vring_addr(0),
                vf_vring_state(10, 0, 0),
                vf_u64(vf::SET_VRING_KICK, 0).with_fds(&[pipe]),
                vf_u64(vf::SET_VRING_CALL, 0).with_fds(&[pipe]),
                vf_u64(vf::SET_VRING_ERR, vf::VRING_NOFD),
                vf_vring_state(18, 0, 1),
                Msg::new(11, V1, 0u64.to_le_bytes().to_vec()),
            ]),
            summary(15, 0, 0, None),
        ),
        (
            "add-and-remove-regions",
            with(vec![
                vf_single(vf::ADD_MEM_REG, ACK, (0, 4 * page, 0), &[own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (MB, 4 * page, 4 * page), &[own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (2 * MB, 16 * page, 0), &[own16]),
                vf_single(vf::REM_MEM_REG, ACK, (0, 4 * page, 0), &[]),
                vf_single(vf::REM_MEM_REG, ACK, (MB, 4 * page, 0), &[own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (0, 8 * page, 0), &[own8]),
                vf_table(V1, &[(4 * MB, 4 * page + 1, 0)], &[own4_odd]),
            ]),
            summary(13, 0, 0, None),
        ),
        (
            "refused-regions",
            with(vec![
                // Past the end of the file, by a page and by a byte.
                vf_table(ACK, &[(0, 9 * page, 0)], &[own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (0, 4 * page + 2, 0), &[own4_odd]),
                // The judge's no, a pipe, a zero size, an overflow.
                vf_table(ACK, &[(0, page, 0), (MB, page, 0)], &[own8, foreign]),
                vf_single(vf::ADD_MEM_REG, ACK, (0, page, 0), &[pipe]),
                vf_single(vf::ADD_MEM_REG, V1, (0, 0, 0), &[own8]),
                vf_single(
                    vf::ADD_MEM_REG,
                    ACK,
                    (u64::MAX - page + 1, page, 0),
                    &[own8],
                ),
                // Overlaps, within a table and with the table.
                vf_table(ACK, &[(0, 2 * page, 0), (page, page, 0)], &[own8, own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (0, 2 * page, 0), &[own8]),
                vf_single(vf::ADD_MEM_REG, ACK, (page, page, 0), &[own8]),
                get_features.clone(),
            ]),
            summary(8, 8, 7, None),
        ),
        (
            "log-base",
            with(vec![
                vf_table(V1, &[(0, 8 * page, 0)], &[own8]),
                Msg::new(vf::SET_LOG_FD, V1, Vec::new()).with_fds(&[pipe]),
                Msg::new(
                    vf::SET_LOG_BASE,
                    ACK,
                    [page.to_le_bytes(), page.to_le_bytes()].concat(),
                )
                .with_fds(&[own8]),
                Msg::new(
                    vf::SET_LOG_BASE,
                    ACK,
                    [(8 * page).to_le_bytes(), page.to_le_bytes()].concat(),
                )
                .with_fds(&[own8]),
            ]),
            summary(9, 0, 0, Some(End::LogBaseRefused)),
        ),
        (
            "split-sends",
            with(vec![
                vf_table(ACK, &[(0, 8 * page, 0)], &[own8]).split(),
                vf_single(vf::ADD_MEM_REG, ACK, (MB, 8 * page, 0), &[own8]).split(),
                vf_u64(vf::SET_VRING_KICK, 1).with_fds(&[pipe]).split(),
                get_features.clone().split(),
            ]),
            summary(10, 0, 0, None),
        ),
        (
            "too-many-fds",
            with(vec![vf_table(
                V1,
                &[(0, page, 0); 8],
                &[own8, own8, own8, own8, own8, own8, own8, own8, own8],
            )]),
            summary(6, 0, 0, Some(End::TooManyFds)),
        ),
        (
            "fd-on-a-plain-request",
            with(vec![get_features.clone().with_fds(&[own8])]),
            summary(6, 0, 0, Some(End::FdCount)),
        ),
        (
            "oversized",
            with(vec![Msg::new(1, V1, vec![0; 0x1001])]),
            summary(6, 0, 0, Some(End::Oversized)),
        ),
        (
            "bad-version",
            with(vec![Msg::new(9, V1, vec![0; 40])])
                .into_iter()
                .chain([Msg::new(1, 0x3, Vec::new())])
                .collect(),
            // The version-3 flags end it before the rest is read.
            summary(7, 0, 0, Some(End::BadVersion)),
        ),
    ];
    let mut encoded = Vec::new();
    for (label, msgs, want) in &seeds {
        let bytes = vf::encode(msgs);
        let got = vf::run_input(&bytes);
        assert_eq!(&got, want, "vhost_filter seed {label}");
        println!("vhost_filter seed {label}: {got:?}");
        encoded.push((*label, bytes));
    }
    // A message cut off by the end of the input.
    let mut cut = vf::encode(&[vf_table(ACK, &[(0, page, 0)], &[own8])]);
    cut.truncate(cut.len() - 5);
    assert_eq!(vf::run_input(&cut), summary(0, 0, 0, Some(End::Truncated)));
    encoded.push(("truncated", cut));
    write_seeds(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/vhost_filter"),
        &numbered(encoded),
        vf::check_filter,
    );
}
