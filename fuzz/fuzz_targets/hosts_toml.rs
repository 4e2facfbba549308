//! Fuzz target: see `harness::hosts_toml`.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hosts_toml(data));
