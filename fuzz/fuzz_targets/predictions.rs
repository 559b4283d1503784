//! A predictions file (`generated_predictions.jsonl`) and a benchmark file, as the evaluator
//! and `eval` read them from users: parsed, then scored as two of the paper's datasets
//! (WildGuardTest pairing the predictions with the benchmark items).
#![no_main]

use guardreasoner::guard::{DatasetPredictions, evaluate, parse_benchmark_json, parse_predictions_jsonl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let benchmark = parse_benchmark_json("fuzz.json", &text).ok();
    let Ok(records) = parse_predictions_jsonl("fuzz.jsonl", &text) else { return };
    let predictions: Vec<DatasetPredictions> = ["ToxicChat", "WildGuardTest"]
        .iter()
        .map(|name| DatasetPredictions {
            dataset: name.to_string(),
            source: "fuzz.jsonl".into(),
            records: records.clone(),
        })
        .collect();
    if let Ok(report) = evaluate(&predictions, benchmark.as_deref()) {
        let _ = report.to_tables();
    }
});
