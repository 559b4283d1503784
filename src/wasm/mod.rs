//! The WebAssembly facade: a thin wasm-bindgen layer over the core for the Web Worker
//! (www/worker.js). Every failure is a JS error with a message; nothing here panics on input.
//! Model bytes never sit whole in wasm memory: the worker hands in a synchronous reader over a
//! file in the origin private file system (www/model-store.js) and tensors are read one at a
//! time.
//! The run bookkeeping the browser evaluator needs (plans, manifests, summaries, prediction
//! and score lines, scoring) is in `runs`.

mod runs;

use crate::error::{Error, Result};
use crate::format::ByteSource;
use crate::guard::{Thresholds, checked_guard_prompt};
use crate::loader::{OpenedModel, open_gguf, open_hf};
use crate::session::{
    BackendChoice, ClassifyEvent, ClassifyItem, DEFAULT_CONTEXT, DEFAULT_MAX_NEW_TOKENS, Device, MODES, Quant,
    RunOptions, Session, Stop, verdict_first_mode,
};
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

/// A byte source backed by JS: `{ name, size, read(offset, length) -> Uint8Array,
/// readInto?(view, offset) -> bytes read }`, synchronous (an OPFS sync access handle in the
/// worker). `readInto` fills a view of wasm memory: `read`'s copies are garbage that the worker
/// does not collect while a load (one synchronous call) runs, and cost the tab about half the
/// model at its peak (ARCHITECTURE.md §6). Without it, or once it throws, `read` is used.
struct JsSource {
    name: String,
    size: u64,
    read: Function,
    read_into: Option<Function>,
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
        let read_into = get("readInto")?.dyn_into::<Function>().ok();
        Ok(Self { name, size, read, read_into })
    }
}

impl ByteSource for JsSource {
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        crate::format::check_read(&self.name, self.size, offset, buf.len())?;
        if let Some(read_into) = &self.read_into {
            // SAFETY: the view covers exactly `buf`, borrowed mutably for this call, and lives only
            // during `readInto`, a synchronous JS call that allocates nothing in wasm memory.
            let view = unsafe { Uint8Array::view_mut_raw(buf.as_mut_ptr(), buf.len()) };
            match read_into.call2(&JsValue::NULL, &view, &JsValue::from_f64(offset as f64)) {
                Ok(n) if n.as_f64() == Some(buf.len() as f64) => return Ok(()),
                Ok(n) => {
                    return Err(Error::format(
                        &self.name,
                        format!("short read: {} of {} bytes at {offset}", n.as_f64().unwrap_or(0.0), buf.len()),
                    ));
                }
                // A source that cannot read into wasm memory: `read`'s copies, from now on.
                Err(_) => self.read_into = None,
            }
        }
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
                let verdict_first = match field(&item, "mode").as_string() {
                    Some(word) => Some(verdict_first_mode(&word).map_err(Error::Prompt)?),
                    None => None,
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

/// The words and defaults the core owns, for the JS side's copy (www/protocol.js) to be checked
/// against (tests/browser/vocabulary.test.mjs): `{backends, quants, modes, defaults: {context,
/// maxNewTokens, mode}, gpuLostPrefix, files: {predictions, scores, manifest, summary, report}}`.
#[wasm_bindgen]
pub fn vocabulary() -> std::result::Result<JsValue, JsValue> {
    use crate::guard::{MANIFEST_FILE, PREDICTIONS_FILE, REPORT_FILE, SCORES_FILE, SUMMARY_FILE};
    to_js(&serde_json::json!({
        "backends": Device::WORDS.map(|(word, _)| word),
        "quants": Quant::WORDS.map(|(word, _)| word),
        "modes": MODES,
        "defaults": { "context": DEFAULT_CONTEXT, "maxNewTokens": DEFAULT_MAX_NEW_TOKENS, "mode": MODES[0] },
        "gpuLostPrefix": crate::error::GPU_LOST_PREFIX,
        "files": {
            "predictions": PREDICTIONS_FILE,
            "scores": SCORES_FILE,
            "manifest": MANIFEST_FILE,
            "summary": SUMMARY_FILE,
            "report": REPORT_FILE,
        },
    }))
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
