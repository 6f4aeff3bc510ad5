//! Fuzz target `frame_reader`: `FrameReader` over a non-blocking
//! socketpair fed in input-chosen chunks, compared with a reference
//! parser. See `src/frames.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmem_fuzz::frames::check_frames(data));
