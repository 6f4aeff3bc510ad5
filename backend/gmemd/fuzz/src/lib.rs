//! The fuzz checks of gmemd, shared by the targets and
//! `examples/gen-seeds.rs`, so every seed runs through exactly the code the
//! fuzzer runs and each input layout has one definition: `ledger_ops` (the
//! ledger) and `vhost_filter` (the vhost-user filter).
//!
//! Every check panics on a violated property; that is what libFuzzer
//! reports as a crash.

pub mod ledger_ops;
pub mod vhost_filter;
