//! Fuzz target `decode_reply`: `Reply`, STATUS page, `FileInfo`,
//! `HelloReply` and `RevokeReport` decoding and round-trips.
//! See `src/replies.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmem_fuzz::replies::check_reply(data));
