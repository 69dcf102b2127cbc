//! cargo-fuzz target `x402_json`: the checks live in `tally_x402::fuzzing::x402_json`, so the regression
//! tests replay this target's corpus and crashing inputs on stable through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_x402::fuzzing::x402_json(data));
