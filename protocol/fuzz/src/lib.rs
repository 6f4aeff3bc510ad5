//! Checks shared by the fuzz targets and the seed generator.
//!
//! Each `fuzz_targets/<name>.rs` is a thin wrapper around one `check_*`
//! function here, so `examples/gen-seeds.rs` can run every seed it writes
//! through exactly the code the fuzzer runs (without libFuzzer), and the
//! input layouts (frame chunking) have one definition. [`seeds`] writes a
//! target's committed seed corpus; the ledger's fuzz crate uses it too.
//!
//! Every check panics on a violated property; that is what libFuzzer reports
//! as a crash.

pub mod frames;
pub mod replies;
pub mod requests;
pub mod seeds;
