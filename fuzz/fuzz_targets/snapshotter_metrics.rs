//! Fuzz target: see `harness::snapshotter_metrics`.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::snapshotter_metrics(data));
