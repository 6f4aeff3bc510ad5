//! Fuzz target `ledger_ops`: operation sequences on gmemd's `Ledger`,
//! invariants checked after every step. See `src/ledger_ops.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmemd_fuzz::ledger_ops::check_ledger(data));
