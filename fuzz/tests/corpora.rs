//! Every input in the fuzz corpora (`fuzz/corpus/<target>/`: the seeds, what fuzzing kept for
//! coverage, and every crash once found) through its target, on stable: what was fuzzed stays
//! checked on each change.

use std::{fs, path::Path};

#[test]
fn every_corpus_input_holds_its_targets_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in remora_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no corpus");
        for input in inputs {
            let data = fs::read(&input).expect("a corpus file");
            let caught = std::panic::catch_unwind(|| target(&data));
            assert!(caught.is_ok(), "{name}: {} fails", input.display());
        }
    }
}
