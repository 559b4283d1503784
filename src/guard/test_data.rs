//! Where tests find the shared GuardReasoner data (benchmarks and the 1B model's predictions).
//! The data is never copied into the crate: it is read from `$GUARDREASONER_SHARED` if set, else
//! from `<CARGO_MANIFEST_DIR>/../shared` (the layout of DESIGN.md §2).

use std::path::{Path, PathBuf};

/// Overrides the location of the shared folder (the one holding `guardreasoner/`).
pub const SHARED_DIR_ENV: &str = "GUARDREASONER_SHARED";

pub use super::predictions::PREDICTIONS_FILE;

/// Lines in all six shipped predictions-1B files together (DESIGN.md §3).
pub const PREDICTIONS_1B_LINES: usize = 2195;

pub fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("shared"),
    }
}

pub fn benchmark_dir() -> PathBuf {
    shared_dir().join("guardreasoner").join("benchmark")
}

pub fn predictions_1b_dir() -> PathBuf {
    shared_dir().join("guardreasoner").join("predictions-1B")
}

/// Reads a data file, failing the test with a message that says where data is looked for.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); set {SHARED_DIR_ENV} to the folder holding guardreasoner/",
            path.display()
        )
    })
}

/// One real model output with where it came from.
pub struct RealOutput {
    pub dataset: &'static str,
    /// 1-based line in the predictions file.
    pub line: usize,
    pub predict: String,
}

/// All 2,195 predictions-1B outputs, in dataset order.
pub fn real_outputs() -> Vec<RealOutput> {
    let dir = predictions_1b_dir();
    let mut outputs = Vec::new();
    for spec in super::datasets::DATASETS {
        let path = dir.join(spec.name).join(PREDICTIONS_FILE);
        if !path.is_file() {
            continue;
        }
        let records =
            super::predictions::parse_predictions_jsonl(&path.display().to_string(), &read(&path))
                .unwrap_or_else(|e| panic!("{e}"));
        for (index, record) in records.into_iter().enumerate() {
            outputs.push(RealOutput {
                dataset: spec.name,
                line: index + 1,
                predict: record.predict,
            });
        }
    }
    assert_eq!(
        outputs.len(),
        PREDICTIONS_1B_LINES,
        "predictions-1B looks incomplete under {}",
        dir.display()
    );
    outputs
}
