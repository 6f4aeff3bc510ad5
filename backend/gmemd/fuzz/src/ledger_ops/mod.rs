//! `ledger_ops`: sequences of operations on `gmemd::ledger::Ledger`.
//!
//! Input layout: a sequence of operations, each an opcode byte (taken modulo
//! [`Op::COUNT`]) followed by that operation's fixed number of argument
//! bytes (missing bytes at the end of the input read as zero). Arguments are
//! mapped onto small worlds so operations collide often: 6 VMs (a UUID may
//! come with another VM's name), 7 namespaces (the 6 VMs' and the
//! operators'), 4 file names, a few principals (two uids, an operator, a
//! few cgroups and labels) under 4 tie rules, 8 slots, 8 pids, offsets and
//! sizes of a few pages. A "wide" bind and the `Fill` operation reach the
//! per-file binding limit (`MAX_BINDINGS_PER_FILE`) in few input bytes.
//!
//! Properties, after every operation: `Ledger::assert_consistent` holds; a
//! refused operation leaves the ledger's `Debug` output unchanged; an
//! accepted one has the effect its documentation promises (checked below);
//! every owner is the open lease of the VM whose namespace the file is in;
//! every byte counted is charged to exactly one principal or is an
//! operators' file; retired memory is what a model of it says: a file that
//! leaves the ledger (removed, moved, scrubbed, forgotten) with holders is
//! charged to its VM's tie until every holder's process is dead and its
//! lease closed.
//!
//! Lease ids come from a counter, as in the daemon (an id is never reused).
//! The clock (`close_lease`'s `now`) is the step number.

mod harness;
mod ops;
mod world;

pub use harness::Harness;
pub use ops::{decode, encode, Op};
pub use world::*;
use world::{Holders, OPERATOR};

/// Runs every property of the `ledger_ops` target on `data`.
pub fn check_ledger(data: &[u8]) {
    let mut harness = Harness::new();
    for op in decode(data) {
        harness.step(op);
    }
}
