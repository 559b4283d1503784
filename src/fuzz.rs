//! The bodies of the fuzz targets: each reads one untrusted input the way the product reads a
//! user's file and must return, whatever the bytes, never panic. `fuzz/fuzz_targets/*.rs` hands
//! them to libFuzzer (scripts/fuzz.sh, nightly); `tests/fuzz_corpus.rs` replays the stored corpus
//! and the committed findings through the same functions on stable, in the fast test tier.

use crate::backend::cpu::CpuBackend;
use crate::config::LlamaConfig;
use crate::format::safetensors::read_index;
use crate::format::{HostTensor, MemorySource, TensorIndex};
use crate::guard::{
    DatasetPredictions, ReasoningParser, Task, evaluate, find_verdict, parse_benchmark_json, parse_predictions_jsonl,
    parse_scores_jsonl, prediction_tail,
};
use crate::loader::{OpenedModel, open_gguf};

/// A fuzz target's body: one input, read to the end or refused, never a panic.
pub type Body = fn(&[u8]);

/// The fuzz targets by name (the file names under `fuzz/fuzz_targets/`), with their bodies.
pub const TARGETS: [(&str, Body); 5] = [
    ("gguf_model", gguf_model),
    ("safetensors_index", safetensors_index),
    ("hf_config", hf_config),
    ("reasoning_parser", reasoning_parser),
    ("predictions", predictions),
];

/// A GGUF file from the network: header, metadata, the config it implies, the tokenizer built
/// from its embedded vocabulary, and every tensor loaded onto the CPU backend.
pub fn gguf_model(data: &[u8]) {
    let Ok(OpenedModel { mut files, tokenizer, .. }) =
        open_gguf(Box::new(MemorySource::new("fuzz.gguf", data.to_vec())))
    else {
        return;
    };
    if let Ok(ids) = tokenizer.encode_prompt("Hello, world! <|eot_id|>") {
        let _ = tokenizer.decode(&ids);
    }
    let _ = files.load(&CpuBackend::new(None), &mut |_, _| {});
}

/// A safetensors file from the network: the header index (offsets, shapes, dtypes checked
/// against the file) and every tensor it names read and widened to f32.
pub fn safetensors_index(data: &[u8]) {
    let mut source = MemorySource::new("fuzz.safetensors", data.to_vec());
    let mut index = TensorIndex::default();
    if read_index(&mut source, 0, &mut index).is_err() {
        return;
    }
    for entry in index.tensors.values() {
        if let Ok(tensor) = HostTensor::read(&mut source, entry) {
            let _ = tensor.to_f32();
        }
    }
}

/// `config.json` and `generation_config.json` (the input split at its first NUL byte), and the
/// rotary frequencies the parsed config implies.
pub fn hf_config(data: &[u8]) {
    let (config, generation) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let (Ok(config), Ok(generation)) = (std::str::from_utf8(config), generation.map(std::str::from_utf8).transpose())
    else {
        return;
    };
    if let Ok(parsed) = LlamaConfig::from_hf_json(config, generation)
        && parsed.head_dim <= 1 << 16
    {
        let _ = parsed.rope_inv_freq();
    }
}

/// Model output streamed into the reasoning parser in arbitrary pieces (the first byte picks the
/// piece size), then the verdict search the scorer runs on the whole text.
pub fn reasoning_parser(data: &[u8]) {
    let Some((&piece, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut parser = ReasoningParser::new();
    let piece = usize::from(piece % 16) + 1;
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(piece) {
        let _ = parser.push(&chunk.iter().collect::<String>());
    }
    let _ = parser.finish();
    for task in [Task::PromptHarmfulness, Task::ResponseHarmfulness, Task::Refusal] {
        let _ = find_verdict(task, &text);
    }
    let _ = prediction_tail(&text);
}

/// A predictions file (`generated_predictions.jsonl`) and a benchmark file, as the evaluator and
/// `eval` read them from users: parsed, then scored as two of the paper's datasets
/// (WildGuardTest pairing the predictions with the benchmark items).
pub fn predictions(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let benchmark = parse_benchmark_json("fuzz.json", &text).ok();
    let Ok(records) = parse_predictions_jsonl("fuzz.jsonl", &text) else { return };
    let predictions: Vec<DatasetPredictions> = ["ToxicChat", "WildGuardTest"]
        .iter()
        .map(|name| DatasetPredictions {
            dataset: name.to_string(),
            source: "fuzz.jsonl".into(),
            records: records.clone(),
            scores: parse_scores_jsonl("fuzz.scores.jsonl", &text).unwrap_or_default(),
        })
        .collect();
    if let Ok(report) = evaluate(&predictions, benchmark.as_deref()) {
        let _ = report.to_tables();
    }
}
