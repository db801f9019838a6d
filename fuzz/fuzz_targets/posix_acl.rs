#![no_main]
//! See `tower_identity::fuzzing::posix_acl` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_identity::fuzzing::posix_acl(data));
