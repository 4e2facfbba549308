//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`:
//! seeds, and inputs that once crashed, kept as regression cases) through
//! the same harness the fuzzers run, so CI checks them as ordinary tests.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in harness::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for fuzz target {name}");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {name} panicked on {}",
                input.display()
            );
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}
