//! The WebAssembly facade: a thin wasm-bindgen layer over the core for the Web Worker
//! (www/worker.js). Every failure is a JS error with a message; nothing here panics on input.
//! Model bytes never sit whole in wasm memory: the worker hands in a synchronous reader over a
//! file in the origin private file system (www/model-store.js) and tensors are read one at a
//! time.

use crate::error::{Error, Result};
use crate::format::ByteSource;
use crate::guard::{
    DATASETS, DatasetPredictions, GroundTruthSource, PlannedItem, RunManifest, RunSummary, Shard, Thresholds,
    checked_guard_prompt, dataset_spec, evaluate, parse_benchmark_json, parse_predictions_jsonl, parse_scores_jsonl,
    plan_items,
};
use crate::loader::{ModelIdentity, OpenedModel, open_gguf, open_hf};
use crate::session::{BackendChoice, ClassifyEvent, ClassifyItem, Device, Quant, RunOptions, Session, Stop};
use js_sys::{Function, Promise, Uint8Array};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// The threaded build's `initThreadPool(n)`: starts rayon's pool of `n` Web Workers sharing this
/// module's memory; the worker calls it once, before loading a model (ARCHITECTURE.md §6).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// A byte source backed by JS: `{ name, size, read(offset, length) -> Uint8Array }`, where
/// `read` is synchronous (an OPFS sync access handle in the worker).
struct JsSource {
    name: String,
    size: u64,
    read: Function,
}

impl JsSource {
    fn from_js(v: &JsValue) -> Result<Self> {
        let get = |k: &str| {
            js_sys::Reflect::get(v, &JsValue::from_str(k)).map_err(|_| Error::Other(format!("model source lacks {k}")))
        };
        let name = get("name")?.as_string().unwrap_or_else(|| "model".into());
        let size = get("size")?.as_f64().ok_or_else(|| Error::Other(format!("{name}: size is not a number")))? as u64;
        let read =
            get("read")?.dyn_into::<Function>().map_err(|_| Error::Other(format!("{name}: read is not a function")))?;
        Ok(Self { name, size, read })
    }
}

impl ByteSource for JsSource {
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        crate::format::check_read(&self.name, self.size, offset, buf.len())?;
        let out = self
            .read
            .call2(&JsValue::NULL, &JsValue::from_f64(offset as f64), &JsValue::from_f64(buf.len() as f64))
            .map_err(|e| Error::Other(format!("reading {}: {}", self.name, js_message(&e))))?;
        let bytes = out
            .dyn_into::<Uint8Array>()
            .map_err(|_| Error::Other(format!("reading {}: read() did not return a Uint8Array", self.name)))?;
        if bytes.length() as usize != buf.len() {
            return Err(Error::format(
                &self.name,
                format!("short read: {} of {} bytes at {offset}", bytes.length(), buf.len()),
            ));
        }
        bytes.copy_to(buf);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// Plain JS objects (not Maps) for JSON-like values.
fn to_js(value: &serde_json::Value) -> std::result::Result<JsValue, JsValue> {
    use serde::Serialize;
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

fn js_message(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| js_sys::Reflect::get(e, &JsValue::from_str("message")).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// A loaded model in the worker (JS `Session`). One run at a time: a second concurrent call is
/// refused.
#[wasm_bindgen(js_name = Session)]
pub struct WasmSession {
    session: Rc<RefCell<Session>>,
    /// Destroys the GPU device (a test hook: `lose_gpu_device`); None on the CPU.
    destroy_gpu: Option<Box<dyn Fn()>>,
}

fn open_files(files: &JsValue) -> Result<OpenedModel> {
    let get = |k: &str| js_sys::Reflect::get(files, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
    match get("kind").as_string().as_deref() {
        Some("gguf") => open_gguf(Box::new(JsSource::from_js(&get("source"))?)),
        Some("hf") => {
            let text = |k: &str| get(k).as_string();
            let config = text("config").ok_or_else(|| Error::Config("config.json is missing".into()))?;
            let tokenizer = get("tokenizer")
                .dyn_into::<Uint8Array>()
                .map_err(|_| Error::Tokenizer("tokenizer.json is missing".into()))?
                .to_vec();
            let shards = js_sys::Array::from(&get("shards"));
            let shards = shards
                .iter()
                .map(|s| JsSource::from_js(&s).map(|s| Box::new(s) as Box<dyn ByteSource>))
                .collect::<Result<Vec<_>>>()?;
            if shards.is_empty() {
                return Err(Error::Config("no .safetensors file was given".into()));
            }
            open_hf(&config, text("generation_config").as_deref(), &tokenizer, shards)
        }
        other => Err(Error::Other(format!("unknown model kind {other:?} (expected \"gguf\" or \"hf\")"))),
    }
}

/// `load_model`'s options, as the worker passes them.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadOptions {
    /// "auto", "webgpu" (or "gpu") or "cpu"; unknown words are refused.
    backend: String,
    /// Float weights: "q8", "q4" or "none" (also "f32", "q8_0", "q4_0").
    quant: String,
    /// Tokens of each conversation's KV cache.
    context: u32,
    /// Conversations decoded together (`classify_many`); default 1.
    #[serde(default)]
    batch: Option<u32>,
    /// Test hook: bytes that stand in for the adapter's buffer binding limit when lower.
    #[serde(default)]
    gpu_buffer_limit: Option<f64>,
    /// Test hook: the load asks the GPU for a buffer it must refuse
    /// (`BackendChoice::gpu_refuse_buffer`).
    #[serde(default)]
    refuse_gpu_buffer: bool,
}

/// Load a model. `files`: `{kind: "gguf", source}` or `{kind: "hf", config, generation_config?,
/// tokenizer: Uint8Array, shards: [source]}`, each source `{name, size, read(offset, length)}`.
/// `options`: `{backend, quant, context, batch?, gpuBufferLimit?, refuseGpuBuffer?}`
/// (`LoadOptions`). `on_progress(done_bytes, total_bytes)` while tensors load.
#[wasm_bindgen]
pub async fn load_model(
    files: JsValue,
    options: JsValue,
    on_progress: Function,
) -> std::result::Result<WasmSession, JsValue> {
    let options: LoadOptions = serde_wasm_bindgen::from_value(options).map_err(js_err)?;
    let choice = BackendChoice {
        device: Device::parse(&options.backend).map_err(js_err)?,
        quant: Quant::parse(&options.quant).map_err(js_err)?,
        gpu_max_binding_bytes: options.gpu_buffer_limit.filter(|b| b.is_finite() && *b >= 1.0).map(|b| b as u64),
        gpu_refuse_buffer: options.refuse_gpu_buffer,
        ..BackendChoice::default()
    };
    let (context, batch) = (options.context, options.batch);
    let model = open_files(&files).map_err(js_err)?;
    let mut progress = |done: u64, total: u64| {
        let _ = on_progress.call2(&JsValue::NULL, &JsValue::from_f64(done as f64), &JsValue::from_f64(total as f64));
    };
    let batch = batch.unwrap_or(1).max(1) as usize;
    let session = Session::load_batched(model, choice, context as usize, batch, &mut progress).await.map_err(js_err)?;
    let destroy_gpu = session.gpu_device_destroyer();
    Ok(WasmSession { session: Rc::new(RefCell::new(session)), destroy_gpu })
}

fn cancel_poll(is_cancelled: &Function) -> impl Fn() -> bool + '_ {
    || is_cancelled.call0(&JsValue::NULL).map(|v| v.is_truthy()).unwrap_or(false)
}

/// A run that stopped on the cancel flag rejects (the JS API turns it into an AbortError).
fn reject_cancelled(stop: Stop) -> std::result::Result<(), JsValue> {
    if stop == Stop::Cancelled { Err(js_err(Error::Cancelled)) } else { Ok(()) }
}

fn to_js_value(value: &impl serde::Serialize) -> std::result::Result<JsValue, JsValue> {
    to_js(&serde_json::to_value(value).map_err(js_err)?)
}

#[wasm_bindgen(js_class = Session)]
impl WasmSession {
    /// Destroys the GPU device now, even mid-run, as a driver reset would: a test hook for what
    /// follows a lost GPU (runs fail with "the GPU device was lost ..."). False on the CPU.
    pub fn lose_gpu_device(&self) -> bool {
        self.destroy_gpu.as_ref().map(|destroy| destroy()).is_some()
    }

    /// Conversations decoded together (`classify_many`).
    pub fn batch(&self) -> u32 {
        self.session.try_borrow().map(|s| s.batch() as u32).unwrap_or(1)
    }

    /// "gpu (<adapter>)" or "cpu (candle, 1 threads)".
    pub fn backend(&self) -> String {
        self.session.try_borrow().map(|s| s.backend().to_string()).unwrap_or_default()
    }

    /// Why the CPU runs although WebGPU was wanted (`backend: "auto"`), or undefined.
    pub fn fallback(&self) -> Option<String> {
        self.session.try_borrow().ok().and_then(|s| s.fallback().map(str::to_string))
    }

    /// What the loaded model is by content: `{bytes, sha256}` (benchmark runs record it).
    pub fn model_identity(&self) -> std::result::Result<JsValue, JsValue> {
        let session = self.session.try_borrow().map_err(|_| js_err("busy: a run is in progress"))?;
        to_js_value(session.model_identity())
    }

    /// Prompt ids of `text`, BOS included.
    pub fn tokenize(&self, text: &str) -> std::result::Result<Vec<u32>, JsValue> {
        let session = self.session.try_borrow().map_err(|_| js_err("busy: a run is in progress"))?;
        session.tokenizer().encode_prompt(text).map_err(js_err)
    }

    /// Greedy generation from ids (EOS stops it). `on_token(id, text_delta)`; `is_cancelled()`
    /// is polled before every token. Resolves to `{tokens, stop, promptTokens, reusedTokens,
    /// timings}`.
    // The borrow is the session's lock: held for the whole run, so a second call is refused.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn generate(&self, ids: Vec<u32>, max_new: u32, on_token: Function, is_cancelled: Function) -> Promise {
        let session = self.session.clone();
        future_to_promise(async move {
            let mut session = session.try_borrow_mut().map_err(|_| js_err("busy: one run at a time"))?;
            let mut on = |id: Option<u32>, delta: &str| -> Result<()> {
                let Some(id) = id else { return Ok(()) }; // the tail of an unfinished character
                on_token
                    .call2(&JsValue::NULL, &JsValue::from(id), &JsValue::from_str(delta))
                    .map(|_| ())
                    .map_err(|e| Error::Other(js_message(&e)))
            };
            let options = RunOptions::new(max_new as usize);
            let out = session.generate(&ids, &options, &cancel_poll(&is_cancelled), &mut on).await.map_err(js_err)?;
            reject_cancelled(out.stop)?;
            to_js_value(&out)
        })
    }

    /// The speed test `guardreasoner bench` runs: a prefill of `ids`, then `gen_tokens` greedy
    /// steps with EOS ignored, after a short warm-up; the cache is reset. Resolves to
    /// `{promptTokens, prefillS, genTokens, decodeS, backend}` (the backend names the CPU kernel).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn speed_test(&self, ids: Vec<u32>, gen_tokens: u32) -> Promise {
        let session = self.session.clone();
        future_to_promise(async move {
            let mut session = session.try_borrow_mut().map_err(|_| js_err("busy: one run at a time"))?;
            let r = session.speed_test(&ids, gen_tokens as usize, true).await.map_err(js_err)?;
            to_js(&serde_json::json!({
                "promptTokens": r.prompt_tokens,
                "prefillS": r.prefill_s,
                "genTokens": r.gen_tokens,
                "decodeS": r.decode_s,
                "backend": session.backend(),
            }))
        })
    }
}

#[wasm_bindgen(js_class = Session)]
impl WasmSession {
    /// The time-to-verdict test `guardreasoner bench` runs (`Session::verdict_speed_test`), on a
    /// whole GuardReasoner prompt `text`, or the benchmark's chat message without one: resolves
    /// to `{promptTokens, reusedTokens, firstVerdictSeconds, verdictFirstSeconds, verdictFirstTokens,
    /// reasoningSeconds, reasoningTokens}`.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn verdict_speed_test(&self, text: Option<String>) -> Promise {
        let session = self.session.clone();
        future_to_promise(async move {
            let mut session = session.try_borrow_mut().map_err(|_| js_err("busy: one run at a time"))?;
            let text = match text {
                Some(text) => text,
                None => session.bench_message().map_err(js_err)?,
            };
            let speed = session.verdict_speed_test(&text).await.map_err(js_err)?;
            to_js_value(&speed)
        })
    }

    /// Classify many complete GuardReasoner prompts, up to the session's batch at once, decoded
    /// together (continuous batching): `next()` returns the next `{index, text, maxNewTokens?,
    /// mode?, threshold?}` (`mode`: "reasoning" or "verdict-first"; `threshold` as the CLI's
    /// `--threshold` reads it) or null, and is called whenever a place is free, so prompts that arrive while a batch runs
    /// join it; `on_event(index, event)` streams each item's events; `on_done(index, result,
    /// error)` gives each item's classification as it finishes (or the message of the error that
    /// kept it from starting); `is_cancelled(index)` is polled before every step. Resolves to the
    /// scheduler's counts (`{items, steps, decode_rows, refills, most_in_flight}`). Each item's
    /// answer is the one `classify` gives it alone.
    // The borrow is the session's lock: held for the whole run, so a second call is refused.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn classify_many(
        &self,
        max_new: u32,
        next: Function,
        on_event: Function,
        on_done: Function,
        is_cancelled: Function,
    ) -> Promise {
        let session = self.session.clone();
        future_to_promise(async move {
            let mut session = session.try_borrow_mut().map_err(|_| js_err("busy: one run at a time"))?;
            let field =
                |v: &JsValue, k: &str| js_sys::Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
            let mut pull = || -> Result<Option<ClassifyItem>> {
                let item = next.call0(&JsValue::NULL).map_err(|e| Error::Other(js_message(&e)))?;
                if item.is_null() || item.is_undefined() {
                    return Ok(None);
                }
                let index =
                    field(&item, "index").as_f64().ok_or_else(|| Error::Other("an item lacks its index".into()))?;
                let text =
                    field(&item, "text").as_string().ok_or_else(|| Error::Other("an item lacks its text".into()))?;
                let max_new_tokens = field(&item, "maxNewTokens").as_f64().map(|n| n.max(0.0) as usize);
                let verdict_first = match field(&item, "mode").as_string().as_deref() {
                    None => None,
                    Some("reasoning") => Some(false),
                    Some("verdict-first") => Some(true),
                    Some(other) => {
                        return Err(Error::Prompt(format!("mode {other:?} is not one of reasoning, verdict-first")));
                    }
                };
                let thresholds = match field(&item, "threshold").as_string() {
                    Some(text) => Some(Thresholds::parse(&text).map_err(Error::Prompt)?),
                    None => None,
                };
                Ok(Some(ClassifyItem { index: index as usize, text, max_new_tokens, verdict_first, thresholds }))
            };
            let mut emit = |index: usize, event: ClassifyEvent| -> Result<()> {
                let value = to_js(&event.to_json()).map_err(|e| Error::Other(js_message(&e)))?;
                on_event
                    .call2(&JsValue::NULL, &JsValue::from(index as f64), &value)
                    .map(|_| ())
                    .map_err(|e| Error::Other(js_message(&e)))
            };
            let mut done = |index: usize, result: Result<crate::session::Classification>| -> Result<()> {
                let (value, error) = match result {
                    Ok(c) => (to_js_value(&c).map_err(|e| Error::Other(js_message(&e)))?, JsValue::UNDEFINED),
                    Err(e) => (JsValue::NULL, JsValue::from_str(&e.to_string())),
                };
                on_done
                    .call3(&JsValue::NULL, &JsValue::from(index as f64), &value, &error)
                    .map(|_| ())
                    .map_err(|e| Error::Other(js_message(&e)))
            };
            let cancelled = |index: usize| {
                is_cancelled.call1(&JsValue::NULL, &JsValue::from(index as f64)).map(|v| v.is_truthy()).unwrap_or(false)
            };
            let options = RunOptions::new(max_new as usize);
            let batch = session.batch();
            let stats = session
                .classify_many(batch, &mut pull, &options, &cancelled, &mut emit, &mut done)
                .await
                .map_err(js_err)?;
            to_js_value(&stats)
        })
    }
}

/// Checks a `threshold` option as `classify_many` reads it ("0.7", "request=0.7,response=0.4"):
/// the worker asks before queueing, so a bad one fails its own request, not the batch.
#[wasm_bindgen]
pub fn check_threshold(text: &str) -> std::result::Result<(), JsValue> {
    Thresholds::parse(text).map(|_| ()).map_err(|e| JsError::new(&e).into())
}

/// The GuardReasoner prompt text of a conversation (`moderate`'s), for `classify_many`.
#[wasm_bindgen]
pub fn moderation_prompt(prompt: &str, response: Option<String>) -> std::result::Result<String, JsValue> {
    checked_guard_prompt(prompt, response.as_deref()).map_err(|e| JsError::new(&e).into())
}

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
