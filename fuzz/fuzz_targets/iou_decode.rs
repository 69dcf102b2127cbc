//! cargo-fuzz target `iou_decode`: the checks live in `tally_core::fuzzing::iou_decode`, so the regression
//! tests replay this target's corpus and crashing inputs on stable through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_core::fuzzing::iou_decode(data));
