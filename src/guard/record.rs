//! What a benchmark run writes beside its predictions: `run.json`, the settings its predictions
//! were made with (a rerun into the same folder must match them), and `summary.json`, the counts,
//! speeds and scores of a run. Written once for the native `predict` and the browser evaluator
//! (through wasm), so both write the same keys. ARCHITECTURE.md §7.

use super::run::Shard;
use crate::loader::ModelIdentity;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "run.json";
pub const SUMMARY_FILE: &str = "summary.json";

/// The settings that decide a run's predictions, plus two fields recorded for people but not
/// compared: which engine wrote them (native and browser write the same predictions) and the
/// model as the user named it (`-m ./x.gguf` and `-m x.gguf` are one model; the identity decides).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub engine: String,
    pub model: String,
    pub model_identity: ModelIdentity,
    /// `auto`, `cpu` or `gpu`, as chosen.
    pub backend: String,
    /// `none`, `q8` or `q4`.
    pub quant: String,
    pub context: usize,
    pub max_new_tokens: usize,
    /// Verdict-first mode (`RunOptions::verdict_first`).
    #[serde(default)]
    pub verdict_first: bool,
}

/// The manifest keys a rerun must match.
const BINDING_KEYS: [&str; 6] = ["model_identity", "backend", "quant", "context", "max_new_tokens", "verdict_first"];

impl RunManifest {
    /// `run.json`'s text.
    pub fn to_file_text(&self) -> String {
        format!("{:#}\n", serde_json::to_value(self).unwrap_or_default())
    }

    /// Checks this run's settings against the `run.json` text already in `folder`: every
    /// binding key must be equal. The error names the first that differs, with both values.
    pub fn check_against(&self, existing: &str, folder: &str) -> Result<(), String> {
        let old: serde_json::Value = serde_json::from_str(existing)
            .map_err(|_| format!("{folder}/{MANIFEST_FILE}: not JSON; remove it or use another --out"))?;
        let new = serde_json::to_value(self).unwrap_or_default();
        for key in BINDING_KEYS {
            // A run.json from before `verdict_first` existed is a reasoning run.
            let missing = if key == "verdict_first" { serde_json::Value::Bool(false) } else { serde_json::Value::Null };
            let (was, now) = (old.get(key).unwrap_or(&missing), &new[key]);
            if was != now {
                let what = if key == "model_identity" {
                    "model_identity (another model file)".to_string()
                } else {
                    key.to_string()
                };
                return Err(format!(
                    "{folder} holds a run with {what} = {was}, this one has {now}; use the same settings to resume, or another --out"
                ));
            }
        }
        Ok(())
    }
}

/// One dataset's share of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatasetTotals {
    pub name: String,
    /// Items this run selects from the dataset.
    pub items: usize,
    /// Of those, items run now (the rest were in the file already).
    pub new_items: usize,
    pub benchmark_items: usize,
    pub tokens_generated: usize,
    pub generation_s: f64,
}

/// Counts and times of the items a run ran, by dataset; `to_json` makes `summary.json`.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    datasets: Vec<DatasetTotals>,
    prompt_tokens: usize,
    reused_prompt_tokens: usize,
    first_token_s: f64,
}

/// What the summary says of the engine: `{engine, backend, ...}` as the edge knows it (the
/// browser adds its version, adapter and fallback).
pub type EngineInfo = serde_json::Map<String, serde_json::Value>;

impl RunSummary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Items that follow go to this dataset.
    pub fn start_dataset(&mut self, name: &str, items: usize, benchmark_items: usize) {
        self.datasets.push(DatasetTotals {
            name: name.to_string(),
            items,
            benchmark_items,
            ..DatasetTotals::default()
        });
    }

    /// One finished item of the current dataset: its new and prompt tokens, the prompt tokens
    /// reused from the previous item, its seconds and its seconds to the first token.
    pub fn add_item(
        &mut self,
        new_tokens: usize,
        prompt_tokens: usize,
        reused_tokens: usize,
        seconds: f64,
        first_token_s: f64,
    ) {
        if let Some(dataset) = self.datasets.last_mut() {
            dataset.new_items += 1;
            dataset.tokens_generated += new_tokens;
            dataset.generation_s += seconds;
        }
        self.prompt_tokens += prompt_tokens;
        self.reused_prompt_tokens += reused_tokens;
        self.first_token_s += first_token_s;
    }

    /// The current dataset's generation time as the clock on the wall saw it, in place of the
    /// sum of its items' times (batched items overlap).
    pub fn set_generation_s(&mut self, seconds: f64) {
        if let Some(dataset) = self.datasets.last_mut() {
            dataset.generation_s = seconds;
        }
    }

    /// `summary.json`: the run's settings, the engine, counts, speeds and `scores` (the scorer's
    /// `EvalReport`).
    #[allow(clippy::too_many_arguments)]
    pub fn to_json(
        &self,
        manifest: &RunManifest,
        shard: Shard,
        limit: Option<usize>,
        engine: EngineInfo,
        load_s: f64,
        wall_s: f64,
        scores: serde_json::Value,
    ) -> serde_json::Value {
        let new_items: usize = self.datasets.iter().map(|d| d.new_items).sum();
        let tokens: usize = self.datasets.iter().map(|d| d.tokens_generated).sum();
        let generation_s: f64 = self.datasets.iter().map(|d| d.generation_s).sum();
        // Items that overlapped (a batch) share their time: decode alone is not separable.
        let batched = engine.get("batch").and_then(|b| b.as_u64()).is_some_and(|b| b > 1);
        let decode = tokens.saturating_sub(new_items) as f64 / (generation_s - self.first_token_s).max(1e-9);
        let mut summary = engine;
        let fields = serde_json::json!({
            "model": manifest.model,
            "model_identity": manifest.model_identity,
            "quant": manifest.quant,
            "context": manifest.context,
            "max_new_tokens": manifest.max_new_tokens,
            "mode": if manifest.verdict_first { "verdict-first" } else { "reasoning" },
            "shard": shard.to_string(),
            "limit": limit,
            "datasets": self.datasets,
            "new_items": new_items,
            "tokens_generated": tokens,
            "prompt_tokens": self.prompt_tokens,
            // Prompt tokens whose KV came from the previous item (the shared instruction).
            "reused_prompt_tokens": self.reused_prompt_tokens,
            // Time to each item's first token, summed: prefill and the first token.
            "first_token_s": self.first_token_s,
            "load_s": load_s,
            "generation_s": generation_s,
            "wall_s": wall_s,
            "items_per_s": new_items as f64 / generation_s.max(1e-9),
            // Generated tokens over the whole generation time, prefill included.
            "tokens_per_s": tokens as f64 / generation_s.max(1e-9),
            // Tokens after each item's first, over the time after it: decode alone.
            // (Not for batched runs, whose items' first tokens overlap.)
            "decode_tokens_per_s": (!batched).then_some(decode),
            "scores": scores,
        });
        if let serde_json::Value::Object(fields) = fields {
            for (key, value) in fields {
                summary.entry(key).or_insert(value);
            }
        }
        serde_json::Value::Object(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> RunManifest {
        RunManifest {
            engine: "native".into(),
            model: "x.gguf".into(),
            model_identity: ModelIdentity { bytes: 10, sha256: "ab".into() },
            backend: "cpu".into(),
            quant: "none".into(),
            context: 4096,
            max_new_tokens: 48,
            verdict_first: false,
        }
    }

    #[test]
    fn a_rerun_must_match_every_binding_setting_but_not_the_spelling() {
        let written = manifest().to_file_text();
        let same_model_other_spelling =
            RunManifest { engine: "browser".into(), model: "./x.gguf".into(), ..manifest() };
        assert_eq!(same_model_other_spelling.check_against(&written, "out"), Ok(()));
        let changes: [(&str, RunManifest); 6] = [
            (
                "model_identity",
                RunManifest { model_identity: ModelIdentity { bytes: 10, sha256: "cd".into() }, ..manifest() },
            ),
            ("backend", RunManifest { backend: "gpu".into(), ..manifest() }),
            ("quant", RunManifest { quant: "q8".into(), ..manifest() }),
            ("context", RunManifest { context: 2048, ..manifest() }),
            ("max_new_tokens", RunManifest { max_new_tokens: 12, ..manifest() }),
            ("verdict_first", RunManifest { verdict_first: true, ..manifest() }),
        ];
        for (key, changed) in changes {
            let err = changed.check_against(&written, "out").unwrap_err();
            assert!(err.starts_with(&format!("out holds a run with {key}")), "{key}: {err}");
        }
        assert!(manifest().check_against("{not json", "out").unwrap_err().contains("not JSON"));
        // A manifest of an older version lacks the new keys: refused, not mixed.
        let old = r#"{"model": "x.gguf", "max_new_tokens": 48, "quant": "none"}"#;
        assert!(manifest().check_against(old, "out").unwrap_err().contains("model_identity"));
        // One from before verdict-first mode was a reasoning run.
        let mut before_modes: serde_json::Value = serde_json::from_str(&written).unwrap();
        before_modes.as_object_mut().unwrap().remove("verdict_first");
        assert_eq!(manifest().check_against(&before_modes.to_string(), "out"), Ok(()));
    }

    #[test]
    fn summary_counts_and_speeds() {
        let mut summary = RunSummary::new();
        summary.start_dataset("A", 3, 100);
        summary.add_item(10, 200, 0, 2.0, 1.0);
        summary.add_item(20, 210, 180, 3.0, 0.5);
        summary.start_dataset("B", 1, 5);
        let engine: EngineInfo = serde_json::from_str(r#"{"engine": "native", "backend": "cpu"}"#).unwrap();
        let json = summary.to_json(&manifest(), Shard::WHOLE, Some(3), engine, 0.5, 9.0, serde_json::json!({}));
        assert_eq!(json["engine"], "native");
        assert_eq!(json["new_items"], 2);
        assert_eq!(json["tokens_generated"], 30);
        assert_eq!(json["reused_prompt_tokens"], 180);
        assert_eq!(json["datasets"][0]["new_items"], 2);
        assert_eq!(json["datasets"][1]["new_items"], 0);
        assert_eq!(json["tokens_per_s"], 6.0);
        assert_eq!(json["decode_tokens_per_s"], 28.0 / 3.5);
        assert_eq!(json["shard"], "0/1");
    }
}
