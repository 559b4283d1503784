//! A predictions file (`generated_predictions.jsonl`) and a benchmark file, as the evaluator
//! and `eval` read them from users: parsed, then scored as two of the paper's datasets
//! (WildGuardTest pairing the predictions with the benchmark items).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardreasoner::fuzz::predictions(data));
