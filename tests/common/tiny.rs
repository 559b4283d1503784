//! The tiny golden models of tests/fixtures/tiny/*.json (made by make_tiny.py with HF
//! transformers), rebuilt bit for bit from their seeded weight spec: CI needs no Python and the
//! repo holds no weights, only the spec, per-tensor sha256 and the goldens.
#![allow(dead_code)]

use super::*;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

pub fn golden(name: &str) -> serde_json::Value {
    let path = repo_dir().join(format!("tests/fixtures/tiny/{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One tensor's bf16 bytes from the spec: splitmix64 stream seeded by the model seed XOR the
/// FNV-1a hash of its name; x = offset + scale * (u / 2^24 * 2 - 1), f64 -> f32 -> bf16.
pub fn spec_tensor_bf16(model_seed: u64, name: &str, elements: usize, offset: f64, scale: f64) -> Vec<u8> {
    let mut rng = SplitMix(model_seed ^ fnv1a64(name.as_bytes()));
    let mut out = Vec::with_capacity(elements * 2);
    for _ in 0..elements {
        let u = (rng.next_u64() >> 40) as f64;
        let x = offset + scale * (u / (1u64 << 24) as f64 * 2.0 - 1.0);
        out.extend_from_slice(&half::bf16::from_f32(x as f32).to_le_bytes());
    }
    out
}

/// Rebuild the HF folder of a tiny golden model under the cache (once per process run), checking
/// every tensor's sha256 against the one transformers saw.
pub fn tiny_folder(name: &str) -> PathBuf {
    // Tests run in parallel threads: build each folder once per process.
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = built.iter().find(|(n, _)| n == name) {
        return dir.clone();
    }
    let dir = build_tiny_folder(name);
    built.push((name.to_string(), dir.clone()));
    dir
}

fn build_tiny_folder(name: &str) -> PathBuf {
    let g = golden(name);
    let dir = cache_dir().join("tiny-rebuilt").join(name);
    let spec = &g["weight_spec"];
    let seed = spec["model_seed_int"].as_u64().unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in spec["tensors"].as_array().unwrap() {
        let tname = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let bytes = spec_tensor_bf16(
            seed,
            tname,
            shape.iter().product(),
            t["offset"].as_f64().unwrap(),
            t["scale"].as_f64().unwrap(),
        );
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, t["sha256"].as_str().unwrap(), "{name}: tensor {tname} does not rebuild bit for bit");
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            tname.to_string(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    std::fs::create_dir_all(&dir).unwrap();
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), g["config_json"].to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), g["generation_config_json"].to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), guardreasoner_style_tokenizer_json(&llama3_tokenizer_json())).unwrap();
    dir
}

/// One golden sequence: prompt ids, last-position logit checks and greedy tokens.
pub struct GoldenSequence {
    pub input_ids: Vec<u32>,
    pub top_ids: Vec<u32>,
    pub top_values: Vec<f32>,
    pub sample_ids: Vec<u32>,
    pub sample_values: Vec<f32>,
    pub sum: f64,
    pub sum_sq: f64,
    pub greedy: Vec<u32>,
    pub gaps: Vec<f32>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}
fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn golden_sequences(name: &str) -> Vec<GoldenSequence> {
    let g = golden(name);
    let tg = &g["transformers_goldens"];
    let sample_ids = ids(&tg["sample_ids"]);
    tg["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| GoldenSequence {
            input_ids: ids(&s["input_ids"]),
            top_ids: ids(&s["last_logits"]["top_ids"]),
            top_values: floats(&s["last_logits"]["top_values"]),
            sample_ids: sample_ids.clone(),
            sample_values: floats(&s["last_logits"]["sample_values"]),
            sum: s["last_logits"]["sum"].as_f64().unwrap(),
            sum_sq: s["last_logits"]["sum_sq"].as_f64().unwrap(),
            greedy: ids(&s["greedy_new_tokens"]),
            gaps: floats(&s["greedy_top1_top2_gap"]),
        })
        .collect()
}
