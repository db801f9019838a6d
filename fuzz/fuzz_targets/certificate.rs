#![no_main]
//! See `tower_identity::fuzzing::certificate` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_identity::fuzzing::certificate(data));
