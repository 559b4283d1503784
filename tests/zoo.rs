//! The shape zoo: tiny Llama models in shapes GuardReasoner-1B does not have but a
//! Llama-architecture model may (tests/fixtures/make_tiny.py, `zoo_*`): one KV head with head_dim
//! 8 and widths that are not multiples of 32 (`zoo_mqa`), eight query heads per KV head with
//! head_dim 64 and an odd feed-forward width (`zoo_gqa8`). Every front door that classifies, on
//! both backends, writes transformers' greedy answer to GuardReasoner's prompt (the guard
//! goldens); every quantization loads each model and classifies. The engine itself is checked
//! against the logit goldens in tests/tiny_goldens.rs.
mod common;

use common::tiny::{golden, tiny_folder};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ZOO: [&str; 2] = ["zoo_mqa", "zoo_gqa8"];

/// transformers' greedy answer to the golden conversation, as text.
struct GuardGolden {
    prompt: String,
    response: String,
    tokens: usize,
    text: String,
}

fn guard_golden(name: &str) -> GuardGolden {
    let g = &golden(name)["guard_goldens"];
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    GuardGolden {
        prompt: s(&g["conversation"]["prompt"]),
        response: s(&g["conversation"]["response"]),
        tokens: g["greedy_new_tokens"].as_array().unwrap().len(),
        text: s(&g["greedy_text"]),
    }
}

fn gr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()))
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::cache_dir().join("scratch/zoo").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `moderate --json` on `backend` with `quant`: the `done` event.
fn moderate(model: &Path, g: &GuardGolden, backend: &str, quant: &str) -> serde_json::Value {
    let max = g.tokens.to_string();
    let args = ["moderate", "--quiet", "--json", "-m", model.to_str().unwrap(), "--prompt", &g.prompt];
    let extra = ["--response", &g.response, "--max-new-tokens", &max, "--backend", backend, "--quant", quant];
    let out = gr(&[&args[..], &extra[..]].concat());
    let what = format!("moderate --backend {backend} --quant {quant}");
    // The random model never writes a verdict: exit 3 (no verdict), not 1 (an error).
    assert_eq!(out.status.code(), Some(3), "{what}: {}", text(&out.stderr));
    let done = text(&out.stdout).lines().last().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    let done = done.unwrap_or_else(|| panic!("{what}: no output"));
    assert_eq!(done["type"], "done", "{what}");
    done
}

#[test]
fn moderate_writes_transformers_greedy_answer_on_both_backends() {
    for name in ZOO {
        let (model, g) = (tiny_folder(name), guard_golden(name));
        for backend in ["cpu", "gpu"] {
            let done = moderate(&model, &g, backend, "none");
            assert_eq!(done["text"].as_str().unwrap(), g.text, "{name} on {backend}: the answer");
            assert_eq!(done["newTokens"], g.tokens as u64, "{name} on {backend}");
        }
    }
}

/// Every quantization loads each model and classifies on both backends: rows that are not whole
/// blocks stay f32 on the CPU (and say so), and are padded on the GPU.
#[test]
fn every_quantization_loads_and_classifies() {
    for name in ZOO {
        let (model, g) = (tiny_folder(name), guard_golden(name));
        for backend in ["cpu", "gpu"] {
            for quant in ["none", "q8", "q4"] {
                let done = moderate(&model, &g, backend, quant);
                assert_eq!(done["newTokens"], g.tokens as u64, "{name} on {backend} --quant {quant}");
                let engine = done["backend"].as_str().unwrap_or_default();
                if backend == "cpu" && quant != "none" && name == "zoo_mqa" {
                    assert!(engine.contains("kept as floats"), "{name} --quant {quant}: {engine}");
                }
            }
        }
    }
}

/// `predict` on a benchmark file of the golden conversation, at batch 1 and at the default batch
/// (the instruction's KV shared between items), on both backends: transformers' answer each time.
#[test]
fn predict_writes_transformers_greedy_answer_at_any_batch() {
    use guardreasoner::guard::INSTRUCTION;
    for name in ZOO {
        let (model, g) = (tiny_folder(name), guard_golden(name));
        let bench = scratch(&format!("{name}-bench"));
        let input = format!("Human user:\n{}\n\nAI assistant:\n{}\n\n", g.prompt, g.response);
        let item = serde_json::json!({"instruction": INSTRUCTION, "input": input, "output": "unharmful"});
        // Three copies: a batch refills and shares the instruction between them.
        let items = serde_json::Value::Array(vec![item; 3]);
        std::fs::write(bench.join("0_0_SimpleSafetyTests.json"), items.to_string()).unwrap();
        for backend in ["cpu", "gpu"] {
            for batch in [Some("1"), None] {
                let out = scratch(&format!("{name}-{backend}-{}", batch.unwrap_or("default")));
                let mut args = vec!["predict", "--quiet", "--model", model.to_str().unwrap(), "--benchmark-dir"];
                args.extend([bench.to_str().unwrap(), "--out", out.to_str().unwrap(), "--datasets"]);
                let max = g.tokens.to_string();
                args.extend(["SimpleSafetyTests", "--max-new-tokens", &max, "--backend", backend]);
                // Exact weights, as transformers ran them (the default is q8).
                args.extend(["--quant", "none"]);
                if let Some(batch) = batch {
                    args.extend(["--batch", batch]);
                }
                let run = gr(&args);
                let what = format!("{name} on {backend}, batch {}", batch.unwrap_or("default"));
                assert!(run.status.success(), "{what}: {}", text(&run.stderr));
                let file = std::fs::read_to_string(out.join("SimpleSafetyTests/generated_predictions.jsonl")).unwrap();
                let lines: Vec<serde_json::Value> = file.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                assert_eq!(lines.len(), 3, "{what}");
                for line in &lines {
                    assert_eq!(line["predict"].as_str().unwrap(), g.text, "{what}: predict");
                }
            }
        }
    }
}
