//! The fuzz check of gmemd's ledger, shared by the `ledger_ops` target and
//! `examples/gen-seeds.rs`, so every seed runs through exactly the code the
//! fuzzer runs and the operation layout has one definition.
//!
//! Every check panics on a violated property; that is what libFuzzer
//! reports as a crash.

pub mod ledger_ops;
