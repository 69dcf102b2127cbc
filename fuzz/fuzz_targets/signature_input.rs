//! cargo-fuzz target `signature_input`: the checks live in `tally_x402::fuzzing::signature_input`, so the regression
//! tests replay this target's corpus and crashing inputs on stable through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_x402::fuzzing::signature_input(data));
