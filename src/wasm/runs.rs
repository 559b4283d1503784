//! The browser evaluator's run bookkeeping, exported from the core so the browser and `predict`
//! write the same files: the plan of a benchmark, `run.json`, `summary.json`, resume points, the
//! lines of the predictions and scores files, scoring and `report.html`.

use super::{js_err, to_js};
use crate::guard::{
    DATASETS, DatasetPredictions, GroundTruthSource, PlannedItem, RunManifest, RunSummary, Shard, dataset_spec,
    evaluate, parse_benchmark_json, parse_predictions_jsonl, parse_scores_jsonl, plan_items,
};
use crate::loader::ModelIdentity;
use crate::session::{Device, Quant};
use wasm_bindgen::prelude::*;

/// The paper's datasets: `[{name, file}]` (`file`: the benchmark file name without `.json`).
#[wasm_bindgen]
pub fn benchmark_datasets() -> std::result::Result<JsValue, JsValue> {
    let list: Vec<serde_json::Value> =
        DATASETS.iter().map(|d| serde_json::json!({"name": d.name, "file": d.benchmark_file})).collect();
    to_js(&serde_json::Value::Array(list))
}

/// The items a run covers in `dataset`'s benchmark file: `{total, items: [{index, prompt,
/// label}], benchmark_items}`. `text` is the file's JSON; `limit` < 0 means all items; shard
/// `shard_index` of `shard_count`. `benchmark_items` is the JSON of the covered items where the
/// scorer needs them (WildGuardTest's label fields), else null.
#[wasm_bindgen]
pub fn plan_benchmark(
    dataset: &str,
    file: &str,
    text: &str,
    limit: f64,
    shard_index: u32,
    shard_count: u32,
) -> std::result::Result<JsValue, JsValue> {
    let shard = Shard::new(shard_index as usize, shard_count as usize).map_err(js_err)?;
    let items = parse_benchmark_json(file, text).map_err(js_err)?;
    let limit = (limit >= 0.0).then_some(limit as usize);
    let planned = plan_items(file, &items, limit, shard).map_err(js_err)?;
    let needs_items = dataset_spec(dataset).is_some_and(|spec| spec.ground_truth == GroundTruthSource::BenchmarkFields);
    let benchmark_items = needs_items.then(|| {
        let covered: Vec<&serde_json::Map<String, serde_json::Value>> =
            items[shard.select(items.len(), limit)].iter().map(|item| &item.fields).collect();
        serde_json::to_string(&covered).unwrap_or_default()
    });
    to_js(&serde_json::json!({"total": items.len(), "items": planned, "benchmark_items": benchmark_items}))
}

/// `run.json` for a browser run. `settings`: `{model, model_identity, backend, quant, context,
/// max_new_tokens}` in the user's words (normalised here, unknown words refused). With
/// `existing` (the folder's `run.json` text, when the folder holds predictions) the settings are
/// checked against it and nothing is returned; without, resolves to the text to write.
#[wasm_bindgen]
pub fn run_manifest(
    settings: JsValue,
    existing: Option<String>,
    folder: &str,
) -> std::result::Result<Option<String>, JsValue> {
    #[derive(serde::Deserialize)]
    struct Settings {
        model: String,
        model_identity: ModelIdentity,
        backend: String,
        quant: String,
        context: usize,
        max_new_tokens: usize,
        #[serde(default)]
        verdict_first: bool,
    }
    let s: Settings = serde_wasm_bindgen::from_value(settings).map_err(js_err)?;
    let manifest = RunManifest {
        engine: "browser".into(),
        model: s.model,
        model_identity: s.model_identity,
        backend: Device::parse(&s.backend).map_err(js_err)?.name().into(),
        quant: Quant::parse(&s.quant).map_err(js_err)?.name().into(),
        context: s.context,
        max_new_tokens: s.max_new_tokens,
        verdict_first: s.verdict_first,
    };
    match existing {
        Some(text) => manifest.check_against(&text, folder).map(|_| None).map_err(js_err),
        None => Ok(Some(manifest.to_file_text())),
    }
}

/// A run's counts, item by item, for `summary.json` (the native `predict` keeps the same).
#[wasm_bindgen(js_name = RunSummary)]
pub struct JsRunSummary(RunSummary);

#[wasm_bindgen(js_class = RunSummary)]
impl JsRunSummary {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self(RunSummary::new())
    }

    /// Items that follow go to this dataset.
    pub fn start_dataset(&mut self, name: &str, items: u32, benchmark_items: u32) {
        self.0.start_dataset(name, items as usize, benchmark_items as usize);
    }

    /// One finished item: the classification's counts and timings.
    pub fn add_item(
        &mut self,
        new_tokens: u32,
        prompt_tokens: u32,
        reused_tokens: u32,
        seconds: f64,
        first_token_s: f64,
    ) {
        self.0.add_item(new_tokens as usize, prompt_tokens as usize, reused_tokens as usize, seconds, first_token_s);
    }

    /// The current dataset's generation time on the wall clock (its items overlap in a batch).
    pub fn set_generation_s(&mut self, seconds: f64) {
        self.0.set_generation_s(seconds);
    }

    /// `summary.json`'s object. `manifest`: the run's `run.json` text; `run`: `{shardIndex,
    /// shardCount, limit (null for none), engine: {engine, backend, ...}, loadSeconds,
    /// wallSeconds}`; `report`: the scorer's report (`score_predictions`).
    pub fn to_json(&self, manifest: &str, run: JsValue, report: JsValue) -> std::result::Result<JsValue, JsValue> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Run {
            shard_index: usize,
            shard_count: usize,
            #[serde(default)]
            limit: Option<usize>,
            engine: serde_json::Map<String, serde_json::Value>,
            load_seconds: f64,
            wall_seconds: f64,
        }
        let manifest: RunManifest = serde_json::from_str(manifest).map_err(js_err)?;
        let run: Run = serde_wasm_bindgen::from_value(run).map_err(js_err)?;
        let shard = Shard::new(run.shard_index, run.shard_count).map_err(js_err)?;
        let report: serde_json::Value = serde_wasm_bindgen::from_value(report).map_err(js_err)?;
        to_js(&self.0.to_json(&manifest, shard, run.limit, run.engine, run.load_seconds, run.wall_seconds, report))
    }
}

impl Default for JsRunSummary {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a run resumes in an existing predictions file (`{done, keep_bytes, partial_bytes}`),
/// given the planned items; errors when the file belongs to another run or is malformed.
#[wasm_bindgen]
pub fn resume_point(file: &str, existing: &[u8], planned: JsValue) -> std::result::Result<JsValue, JsValue> {
    let planned: Vec<PlannedItem> = serde_wasm_bindgen::from_value(planned).map_err(js_err)?;
    let point = crate::guard::resume_point(file, existing, &planned).map_err(js_err)?;
    to_js(&serde_json::to_value(point).map_err(js_err)?)
}

/// One line of a dataset's `scores.jsonl` (newline included): `line` is the predictions file's
/// line, `scores` a result's `{request, completion, response}`.
#[wasm_bindgen]
pub fn scores_line(line: u32, scores: JsValue) -> std::result::Result<String, JsValue> {
    let scores: crate::guard::Scores = serde_wasm_bindgen::from_value(scores).map_err(js_err)?;
    Ok(crate::guard::scores_line(line as usize, &scores))
}

/// A `scores.jsonl` text cut to the first `done` predictions' lines (a resumed run).
#[wasm_bindgen]
pub fn kept_scores(file: &str, text: &str, done: u32) -> std::result::Result<String, JsValue> {
    crate::guard::kept_scores(file, text, done as usize).map_err(js_err)
}

/// One line of `generated_predictions.jsonl` (newline included), keys in the paper's order.
#[wasm_bindgen]
pub fn prediction_line(prompt: &str, label: Option<String>, predict: &str) -> String {
    crate::guard::prediction_line(prompt, label.as_deref(), predict)
}

/// The line of an item the evaluator gave up on: `predict` empty and `failed` saying why (never
/// scored; a rerun resumes after it).
#[wasm_bindgen]
pub fn failed_prediction_line(prompt: &str, label: Option<String>, reason: &str) -> String {
    crate::guard::failed_line(prompt, label.as_deref(), reason)
}

/// `report.html` for a run: `summary` is summary.json's text (`RunSummary.to_json`, stringified:
/// JSON keeps its integers integers).
#[wasm_bindgen]
pub fn report_html(summary: &str) -> std::result::Result<String, JsValue> {
    let summary: serde_json::Value = serde_json::from_str(summary).map_err(js_err)?;
    Ok(crate::guard::report_html(&summary))
}

/// Scores predictions with the paper's rules. `predictions`: `[{dataset, source, text,
/// scores?}]` (the JSONL texts of the predictions and, where there is one, the scores file);
/// `wild_guard_items`: the WildGuardTest benchmark items the predictions cover,
/// as JSON (needed only for WildGuardTest). Resolves to `{report, tables}`.
#[wasm_bindgen]
pub fn score_predictions(
    predictions: JsValue,
    wild_guard_items: Option<String>,
) -> std::result::Result<JsValue, JsValue> {
    #[derive(serde::Deserialize)]
    struct Input {
        dataset: String,
        source: String,
        text: String,
        #[serde(default)]
        scores: Option<String>,
    }
    let inputs: Vec<Input> = serde_wasm_bindgen::from_value(predictions).map_err(js_err)?;
    let mut parsed = Vec::new();
    for input in inputs {
        let records = parse_predictions_jsonl(&input.source, &input.text).map_err(js_err)?;
        let scores = match &input.scores {
            Some(text) => parse_scores_jsonl(&format!("{} scores", input.source), text).map_err(js_err)?,
            None => Default::default(),
        };
        parsed.push(DatasetPredictions { dataset: input.dataset, source: input.source, records, scores });
    }
    let wild_guard = wild_guard_items
        .map(|text| parse_benchmark_json("WildGuardTest benchmark items", &text))
        .transpose()
        .map_err(js_err)?;
    let report = evaluate(&parsed, wild_guard.as_deref()).map_err(js_err)?;
    let tables = report.to_tables();
    to_js(&serde_json::json!({"report": report, "tables": tables}))
}
