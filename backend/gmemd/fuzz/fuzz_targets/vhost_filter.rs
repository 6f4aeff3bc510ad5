//! Fuzz target `vhost_filter`: frontend message sequences with fds through
//! the real vhost-user filter (`gmemd::vhost::filter::run`) between two
//! socketpairs, checked against a model of what it must forward, refuse
//! and end on. See `src/vhost_filter/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmemd_fuzz::vhost_filter::check_filter(data));
