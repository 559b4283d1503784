//! The fuzz targets' bodies (`guardreasoner::fuzz`, the same functions cargo-fuzz runs) over every
//! input kept for them, on stable and in seconds: the committed seeds and findings
//! (`tests/fixtures/fuzz/<target>/`), and where this machine has fuzzed, the fuzzer's stored
//! corpus and seeds (`.cache/fuzz/`, scripts/fuzz.sh). A finding that comes back fails here, in the
//! fast tier, without a nightly toolchain or a sanitizer build. Not yet: the suite runs in release,
//! without overflow checks, so a finding that was an arithmetic overflow (and nothing else) comes
//! back only under the fuzzer's own build (debug assertions on).
mod common;

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_stored_fuzz_input_is_read_without_a_panic() {
    let committed = common::repo_dir().join("tests/fixtures/fuzz");
    let stored = common::cache_dir().join("fuzz");
    let mut failures = Vec::new();
    for (target, body) in guardreasoner::fuzz::TARGETS {
        let own = inputs(&committed.join(target));
        assert!(!own.is_empty(), "{target}: no committed inputs in {}", committed.join(target).display());
        let found = [stored.join("corpus").join(target), stored.join("seeds").join(target)].map(|d| inputs(&d));
        let all: Vec<PathBuf> = own.into_iter().chain(found.into_iter().flatten()).collect();
        for file in &all {
            let bytes = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| body(&bytes)).is_err() {
                failures.push(format!("{target}: {}", file.display()));
            }
        }
        eprintln!("{target}: {} inputs", all.len());
    }
    assert!(
        failures.is_empty(),
        "inputs that panicked (reproduce: scripts/fuzz.sh, or cargo +nightly fuzz run <target> <file>):\n{}",
        failures.join("\n")
    );
}
