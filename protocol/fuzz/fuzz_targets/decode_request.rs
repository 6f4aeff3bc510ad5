//! Fuzz target `decode_request`: `RequestBody::decode` (code = first 4
//! bytes, payload = the rest) with round-trip and canonical-encoding
//! checks, `Header::from_bytes` on the first 12 bytes, and the server's
//! syntax check. See `src/requests.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmem_fuzz::requests::check_request(data));
