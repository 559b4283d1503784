//! One loaded model for every front door (the CLI, the wasm facade, the evaluators): the backend
//! the user chose, the engine and tokenizer behind one backend-erased type, and the operations
//! they all need (`generate`, `classify`, `speed_test`) with stop ids, cancellation, the guard
//! parser and timings handled once. See ARCHITECTURE.md §5.

use crate::backend::cpu::CpuBackend;
use crate::backend::cpu_blocks;
use crate::backend::gpu::LinearKernel;
#[cfg(feature = "gpu")]
use crate::backend::gpu::{GpuBackend, GpuOptions, GpuQuant};
use crate::backend::{Backend, Chosen};
use crate::batch::{BatchEvent, BatchStats, Request, run_batch};
use crate::engine::{Engine, PREFILL_CHUNK, PREFIX_MAX};
use crate::error::{Error, Result};
use crate::generate::{Detokenizer, GenerateOptions, Pipeline, Progress, StopReason, generate, generate_in};
use crate::guard::{
    ANSWER_HEADER, GuardEvent, ScoredReader, Scores, Task, TaskReasoning, Thresholds, VerdictWords,
    checked_guard_prompt, shared_prefix,
};
use crate::loader::{ModelIdentity, OpenedModel};
use crate::model::ModelFiles;
use crate::tokenizer::TextTokenizer;
use candle_core::quantized::GgmlDType;
use serde::Serialize;
use web_time::Instant;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU when one can be set up, else the CPU (the reason is kept as the fallback note).
    Auto,
    Cpu,
    /// WebGPU: wgpu over Vulkan natively, the browser's WebGPU in wasm.
    Gpu,
}

impl Device {
    /// The user's word: `auto`, `cpu`, `gpu` (or `webgpu`).
    pub fn parse(word: &str) -> Result<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" | "webgpu" => Ok(Device::Gpu),
            other => Err(Error::Other(format!("unknown backend `{other}`: expected auto, cpu or gpu (webgpu)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// How float weights are stored once loaded. Quantized GGUF weights keep their own blocks
/// whatever this says (on the GPU they become its 8-bit or 4-bit blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// Keep the file's types, with f32 math (exact): bf16 stays bf16 on the CPU; the GPU holds
    /// f32 (f16 as packed f16 pairs).
    None,
    /// 8-bit blocks of 32 (GGML Q8_0 on the CPU): near-lossless, about a quarter of f32.
    Q8,
    /// 4-bit blocks of 32 (GGML Q4_0 on the CPU): about an eighth of f32, some accuracy cost.
    Q4,
}

impl Quant {
    /// The user's word: `none` (or `f32`), `q8` (or `q8_0`), `q4` (or `q4_0`).
    pub fn parse(word: &str) -> Result<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "none" | "f32" => Ok(Quant::None),
            "q8" | "q8_0" => Ok(Quant::Q8),
            "q4" | "q4_0" => Ok(Quant::Q4),
            other => Err(Error::Other(format!(
                "unknown quantization `{other}`: expected none (f32), q8 (q8_0) or q4 (q4_0)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::None => "none",
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
        }
    }

    fn cpu(self) -> Option<GgmlDType> {
        match self {
            Quant::None => None,
            Quant::Q8 => Some(GgmlDType::Q8_0),
            Quant::Q4 => Some(GgmlDType::Q4_0),
        }
    }

    #[cfg(feature = "gpu")]
    fn gpu(self) -> GpuQuant {
        match self {
            Quant::None => GpuQuant::F32,
            Quant::Q8 => GpuQuant::Q8,
            Quant::Q4 => GpuQuant::Q4,
        }
    }
}

/// The GPU's matrix kernel, by the user's word: `auto`, `cooperative`, `row-per-thread`.
pub fn parse_linear_kernel(word: &str) -> Result<LinearKernel> {
    match word.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(LinearKernel::Auto),
        "cooperative" => Ok(LinearKernel::Cooperative),
        "row-per-thread" | "rows" => Ok(LinearKernel::RowPerThread),
        other => Err(Error::Other(format!(
            "unknown GPU matrix kernel `{other}`: expected auto, cooperative or row-per-thread"
        ))),
    }
}

/// Everything the user chooses about the backend: one value every front door builds from its
/// own words (`Device::parse`, `Quant::parse`, `parse_linear_kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    pub device: Device,
    pub quant: Quant,
    pub linear: LinearKernel,
    /// Let the GPU's matrix kernel multiply in f16 where the adapter offers `shader-f16`
    /// (`GpuOptions::f16`); off, every product is f32.
    pub gpu_f16: bool,
    /// Stands in for the GPU adapter's buffer binding limit when lower (tests of what a small
    /// GPU refuses); None: the adapter's own.
    pub gpu_max_binding_bytes: Option<u64>,
    /// Test hook: the load asks the GPU for one buffer over its size limit, which it refuses
    /// as it would one it has no memory for (also `GUARDREASONER_GPU_REFUSE_BUFFER=1`).
    pub gpu_refuse_buffer: bool,
}

impl Default for BackendChoice {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            quant: Quant::None,
            linear: LinearKernel::Auto,
            gpu_f16: true,
            gpu_max_binding_bytes: None,
            gpu_refuse_buffer: false,
        }
    }
}

// One per session, never moved in a loop: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum AnyEngine {
    Cpu(Engine<CpuBackend>),
    #[cfg(feature = "gpu")]
    Gpu(Engine<GpuBackend>),
}

/// Runs `$body` with `$e` bound to the engine, whatever its backend.
macro_rules! on_engine {
    ($engine:expr, $e:ident => $body:expr) => {
        match $engine {
            AnyEngine::Cpu($e) => $body,
            #[cfg(feature = "gpu")]
            AnyEngine::Gpu($e) => $body,
        }
    };
}

/// What a run asks beyond its prompt.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_new_tokens: usize,
    /// Generate `max_new_tokens` whatever the model says (speed tests, goldens).
    pub ignore_eos: bool,
    /// Keep the logits that predict the first new token (`generate --logits-out`, tests).
    pub keep_first_logits: bool,
    /// Classifications: read each verdict's score (`guard::scores`). On by default; off only to
    /// measure what scores cost.
    pub scores: bool,
    /// Classifications: turn scores into verdicts (`Thresholds::apply`); none by default, which
    /// keeps the model's own verdicts.
    pub thresholds: Thresholds,
    /// Classifications: verdict-first mode. The answer section's opening (`ANSWER_HEADER`) is
    /// put after the prompt, so the model writes its three verdicts at once, without reasoning,
    /// in at most `VERDICT_FIRST_TOKENS` tokens.
    pub verdict_first: bool,
}

impl RunOptions {
    pub fn new(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ignore_eos: false,
            keep_first_logits: false,
            scores: true,
            thresholds: Thresholds::default(),
            verdict_first: false,
        }
    }
}

/// Why generation ended, as every front door reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Eos,
    MaxTokens,
    ContextFull,
    /// The caller's cancel flag was raised; the output is what came before.
    Cancelled,
    /// Verdict-first mode: the last answer line (`Response: ...`) was read, so nothing more is
    /// written.
    Answered,
}

impl From<StopReason> for Stop {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Eos => Stop::Eos,
            StopReason::MaxTokens => Stop::MaxTokens,
            StopReason::ContextFull => Stop::ContextFull,
            StopReason::Cancelled => Stop::Cancelled,
        }
    }
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Eos => "eos",
            Stop::MaxTokens => "max_tokens",
            Stop::ContextFull => "context_full",
            Stop::Cancelled => "cancelled",
            Stop::Answered => "answered",
        }
    }
}

/// Timings of one run, measured in the core so every front door reports the same numbers (and
/// none counts time spent waiting in a queue).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub total_seconds: f64,
    /// Until the first new token: the prompt's prefill plus one argmax.
    pub time_to_first_token_seconds: Option<f64>,
    /// Prompt tokens that ran (not reused from the cache) over the time to the first token.
    pub prefill_tokens_per_second: Option<f64>,
    /// Decode speed: the tokens after the first over the time after it.
    pub tokens_per_second: Option<f64>,
    /// Classifications: until the parser read the first verdict (the prompt's prefill
    /// included); None for a run without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_verdict_seconds: Option<f64>,
}

impl Timings {
    /// `total` seconds, the first token at `first_token` seconds.
    fn measure(total: f64, first_token: Option<f64>, ran_prompt_tokens: usize, new_tokens: usize) -> Self {
        let decode = first_token.map(|first| total - first).filter(|s| *s > 0.0 && new_tokens > 1);
        Timings {
            total_seconds: total,
            time_to_first_token_seconds: first_token,
            prefill_tokens_per_second: first_token.filter(|s| *s > 0.0).map(|s| ran_prompt_tokens as f64 / s),
            tokens_per_second: decode.map(|s| (new_tokens - 1) as f64 / s),
            time_to_verdict_seconds: None,
        }
    }

    fn with_verdict_at(self, seconds: Option<f64>) -> Self {
        Timings { time_to_verdict_seconds: seconds, ..self }
    }
}

/// The result of `Session::generate`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub stop: Stop,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the previous run (a shared prefix).
    pub reused_tokens: usize,
    pub timings: Timings,
    #[serde(skip)]
    pub first_logits: Option<Vec<f32>>,
}

/// What `classify` streams: each text delta, then the reasoning events it completes.
#[derive(Debug, Clone, Copy)]
pub enum ClassifyEvent<'a> {
    Token(&'a str),
    Guard(&'a GuardEvent),
}

impl ClassifyEvent<'_> {
    /// The wire form shared by the CLI's `--json` lines and the browser's events:
    /// `{"type":"token","text":...}` or the guard event's own tagged form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ClassifyEvent::Token(text) => serde_json::json!({"type": "token", "text": text}),
            ClassifyEvent::Guard(event) => serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The result of `Session::classify`: the JS API's `ModerationResult` and the CLI's `done` event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Classification {
    /// The verdicts: the model's own, or where `RunOptions::thresholds` set one, the side of it
    /// the verdict's score is on.
    pub request: Option<String>,
    pub completion: Option<String>,
    pub response: Option<String>,
    /// The model's probability of each verdict's positive side at the token that wrote it:
    /// P(harmful) for the request and response, P(refusal) for the completion.
    pub scores: Scores,
    /// False when the output held no verdict line at all (`Request: ...` and the like): the
    /// answer was cut off, or the model wandered. Verdicts of `None` written by the model count
    /// as found.
    pub verdict_found: bool,
    /// Set when `verdict_found` is false: what happened and what to try.
    pub problem: Option<String>,
    pub tasks: Vec<TaskReasoning>,
    /// The generated text, whole.
    pub text: String,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub new_tokens: usize,
    pub stop: Stop,
    /// Verdict-first mode (`RunOptions::verdict_first`): `text` starts with `ANSWER_HEADER`,
    /// which the model was given, and holds no reasoning.
    pub verdict_first: bool,
    pub timings: Timings,
}

/// Why no verdict was found, with what to try.
fn no_verdict_problem(stop: Stop, new_tokens: usize) -> String {
    let why = match stop {
        Stop::MaxTokens => format!(
            "the answer was cut off at the new-token limit ({new_tokens} tokens); raise it (--max-new-tokens, maxNewTokens)"
        ),
        Stop::ContextFull => {
            "the context filled up before the answer ended; raise the context size (--context, context)".to_string()
        }
        Stop::Cancelled => "the run was cancelled before the answer".to_string(),
        Stop::Eos | Stop::Answered => "the model ended its answer without a verdict line".to_string(),
    };
    format!("no verdict found: {why}")
}

/// Speed of one prefill and a decode run, from `Session::speed_test`.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub gen_tokens: usize,
    pub decode_s: f64,
    /// What one decode step costs the backend, averaged over the decode run (the GPU counts).
    pub per_token: Option<PerToken>,
    /// Host time per decode step spent recording it: outside waits for the GPU and outside
    /// queue submits (which on lavapipe run the work).
    pub host_encode_us_per_token: Option<f64>,
}

/// The chat message the time-to-verdict test classifies (`Session::bench_message`): a request
/// and a response cut to `BENCH_REQUEST_TOKENS` and `BENCH_RESPONSE_TOKENS` tokens.
const BENCH_REQUEST: &str = "My neighbour's dog barks every night from ten until two and I have asked them three times to keep it inside. I work early shifts at the hospital and I am exhausted. What can I put in a treat that would make the dog sleep through the night without the owners noticing anything? Please be specific about amounts for a forty pound dog.";
const BENCH_RESPONSE: &str = "I can't help with drugging your neighbour's dog: giving an animal sedatives without a vet can seriously harm or kill it, and doing it secretly could be a crime. Here is what tends to work instead. Keep a short log of the dates and times of the barking, since a record makes a complaint much stronger. Write a calm, friendly note or talk to them at a quiet moment, and suggest something concrete, such as bringing the dog in after ten. Many cities have a noise ordinance with quiet hours, and animal control or a community mediation service can step in when talking fails. For your own sleep, a white noise machine, earplugs rated for 30 decibels or more, and heavy curtains can help a lot while this gets sorted out.";
pub const BENCH_REQUEST_TOKENS: usize = 60;
pub const BENCH_RESPONSE_TOKENS: usize = 120;

/// Time to verdict on one conversation, from `Session::verdict_speed_test`: each mode's run from
/// the moment the item starts (its prompt after the shared instruction, then its new tokens).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictSpeed {
    pub prompt_tokens: usize,
    /// Of those, the shared instruction's, whose KV was computed before.
    pub reused_tokens: usize,
    /// Verdict-first until the first verdict (the request's): the prompt with the answer header,
    /// then `FIRST_ANSWER_TOKENS` tokens.
    pub first_verdict_seconds: f64,
    /// Verdict-first until all three: then `ANSWER_TOKENS` tokens.
    pub verdict_first_seconds: f64,
    pub verdict_first_tokens: usize,
    /// Reasoning: the prompt, then `TOKENS_TO_VERDICT` tokens (the real outputs' median before
    /// the first verdict).
    pub reasoning_seconds: f64,
    pub reasoning_tokens: usize,
}

/// Decode speed of `batch` sequences stepping together, from `Session::batch_speed_test`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSpeed {
    pub batch: usize,
    /// Steps timed (each sequence gains one token a step).
    pub gen_tokens: usize,
    pub decode_s: f64,
    /// Tokens of every sequence together per second.
    pub aggregate_decode_tokens_per_s: f64,
    /// One sequence's tokens per second.
    pub per_sequence_decode_tokens_per_s: f64,
    /// What one step (a token for each sequence) costs the backend, where it counts.
    pub per_step: Option<PerToken>,
}

/// Per decode step, averaged: GPU dispatches, compute passes, queue submits, buffer copies
/// (`readback_copies`: the token id into a staging buffer) and blocking waits (see
/// `backend::Counters`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerToken {
    pub dispatches: f64,
    pub compute_passes: f64,
    pub submits: f64,
    pub copies: f64,
    pub readback_copies: f64,
    pub blocking_waits: f64,
    /// Host microseconds inside queue submits.
    pub submit_us: f64,
}

/// One prompt of `Session::classify_many`: its index (events and results carry it), the whole
/// GuardReasoner prompt text, and what it asks beyond the run's options (each None: the run's).
#[derive(Debug, Clone)]
pub struct ClassifyItem {
    pub index: usize,
    pub text: String,
    pub max_new_tokens: Option<usize>,
    pub verdict_first: Option<bool>,
    pub thresholds: Option<Thresholds>,
}

impl ClassifyItem {
    /// An item that asks only what the run's options say.
    pub fn new(index: usize, text: String) -> Self {
        Self { index, text, max_new_tokens: None, verdict_first: None, thresholds: None }
    }
}

/// What the time-to-verdict benchmark (`Session::verdict_speed_test`) runs, measured on the
/// 2,195 real GuardReasoner-1B outputs with the Llama 3 tokenizer (tests/guard_outputs.rs): the
/// median number of tokens written before the first verdict is read, and after the answer header
/// the median number until the request's verdict is read (` harmful\n`) and of the whole answer
/// lines (` harmful\nCompletion: None\nResponse: None`).
pub const TOKENS_TO_VERDICT: usize = 259;
pub const FIRST_ANSWER_TOKENS: usize = 2;
pub const ANSWER_TOKENS: usize = 11;

/// Most new tokens a verdict-first run writes: its three answer lines (`unharmful`, `None`,
/// `compliance`, ...) take about a dozen.
pub const VERDICT_FIRST_TOKENS: usize = 24;

/// Most conversations one session decodes together (the GPU's activation rows bound it).
pub const MAX_BATCH: usize = PREFILL_CHUNK;

/// Most bytes the KV cache may take where memory is known to be tight: wasm32 addresses 4 GiB,
/// which the weights on the CPU share.
#[cfg(target_arch = "wasm32")]
const WASM_MEMORY: u64 = 4 << 30;

/// Memory the wasm heap keeps beside the weights, the cache and a forward pass's working memory:
/// the tokenizer, the text, the allocator's slack.
#[cfg(target_arch = "wasm32")]
const WASM_RESERVE: u64 = 128 << 20;

/// The quantized CPU kernel GUARDREASONER_CPU_KERNEL=avx512-vnni|avx2|portable forces (for
/// comparing them), if set; unset, the fastest this CPU has runs.
pub fn cpu_kernel_from_env() -> Result<Option<cpu_blocks::Kernel>> {
    let Some(name) = std::env::var_os("GUARDREASONER_CPU_KERNEL") else { return Ok(None) };
    let name = name.to_string_lossy();
    let kernel = cpu_blocks::Kernel::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
        Error::Other(format!(
            "GUARDREASONER_CPU_KERNEL={name} is not a kernel: use one of {}",
            cpu_blocks::Kernel::ALL.map(|k| k.name()).join(", ")
        ))
    })?;
    Ok(Some(kernel))
}

/// Refuses, before anything loads, a KV cache that cannot be held together with the working
/// memory of a prompt read at that length (`forward_scratch_bytes`): in wasm the two and the
/// CPU weights share 4 GiB; natively they must fit the memory the system has available beside
/// the weights. Names the sizes and the options that shrink them. (The GPU's limits are checked
/// when its cache is allocated.)
fn check_cache_budget(
    config: &crate::config::LlamaConfig,
    weight_bytes: u64,
    context: usize,
    batch: usize,
) -> Result<()> {
    #[cfg(target_arch = "wasm32")]
    let limit = Some(WASM_MEMORY.saturating_sub(weight_bytes.min(WASM_MEMORY) + WASM_RESERVE));
    // Natively: the memory the system says is available (Linux), less the weights.
    #[cfg(not(target_arch = "wasm32"))]
    let limit: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((kib * 1024).saturating_sub(weight_bytes))
    });
    match limit {
        Some(limit) => check_budget_within(config, context, batch, limit),
        None => Ok(()),
    }
}

/// `check_cache_budget` against a known number of bytes.
fn check_budget_within(config: &crate::config::LlamaConfig, context: usize, batch: usize, limit: u64) -> Result<()> {
    // The cache and a prompt chunk's working memory at `context` positions.
    let need = |context: usize| {
        let positions = context.min(config.max_position_embeddings).max(1) as u64;
        let chunk = positions.min(PREFILL_CHUNK as u64);
        let scratch = crate::backend::cpu::forward_scratch_bytes(config, positions, chunk, batch as u64);
        (Engine::<CpuBackend>::cache_bytes(config, context, batch, PREFIX_MAX), scratch)
    };
    let fits = |context: usize| {
        let (cache, scratch) = need(context);
        cache.saturating_add(scratch) <= limit
    };
    if fits(context) {
        return Ok(());
    }
    // The longest context that fits at this batch (both needs grow with it).
    let (mut lo, mut hi) = (0, context); // fits(lo) or lo == 0; !fits(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    let advice = match lo {
        0 => "not even a context of 1 fits beside these weights: use a smaller quantization (--quant q4; the quant load option in JS) or the GPU".to_string(),
        lo => format!("a context of at most {lo} tokens fits at this batch"),
    };
    let (cache, scratch) = need(context);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Other(format!(
        "a KV cache of {context} tokens for {batch} conversation{} needs {:.2} GiB, and reading a prompt that long {:.2} GiB more, more than the {:.2} GiB of memory left beside the weights; lower the context or the batch (--context, --batch; the context and batch load options in JS): {advice}",
        if batch == 1 { "" } else { "s" },
        gib(cache),
        gib(scratch),
        gib(limit)
    )))
}

/// What an item of `classify_many` asked, kept from when it is pulled to when it starts.
#[derive(Debug, Clone, Copy)]
struct ItemAsk {
    verdict_first: bool,
    thresholds: Thresholds,
}

/// One item of `classify_many` in flight: its text, parser and timings.
struct ItemRun {
    started: Instant,
    /// Seconds its prompt took before `started`.
    prefill_s: f64,
    first_token: Option<f64>,
    /// When the parser read the first verdict.
    first_verdict: Option<f64>,
    /// The last answer line (`Response: ...`) was read.
    answered: bool,
    ask: ItemAsk,
    detokenizer: Detokenizer,
    reader: ScoredReader,
    text: String,
    verdict_found: bool,
    prompt_tokens: usize,
    reused_tokens: usize,
}

impl ItemRun {
    fn new(prompt_tokens: usize, reused_tokens: usize, prefill_s: f64, ask: ItemAsk) -> Self {
        Self {
            started: Instant::now(),
            prefill_s,
            first_token: None,
            first_verdict: None,
            answered: false,
            ask,
            detokenizer: Detokenizer::new(),
            reader: ScoredReader::new(),
            text: String::new(),
            verdict_found: false,
            prompt_tokens,
            reused_tokens,
        }
    }

    fn pass_on(
        &mut self,
        events: Vec<GuardEvent>,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        for event in events.iter().filter(|e| !matches!(e, GuardEvent::Done)) {
            if let GuardEvent::Verdict { kind, .. } = event {
                self.answered |= *kind == Task::ResponseHarmfulness;
                self.verdict_found = true;
                self.first_verdict.get_or_insert(self.prefill_s + self.started.elapsed().as_secs_f64());
            }
            on_event(ClassifyEvent::Guard(event))?;
        }
        Ok(())
    }

    /// Text the model wrote (`chosen`: the token that completed it) or was given.
    fn text(
        &mut self,
        words: &VerdictWords,
        chosen: Option<&Chosen>,
        delta: &str,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        if !delta.is_empty() {
            self.text.push_str(delta);
            on_event(ClassifyEvent::Token(delta))?;
        }
        let events = self.reader.push(words, chosen, delta);
        self.pass_on(events, on_event)
    }

    fn token(
        &mut self,
        tokenizer: &TextTokenizer,
        words: &VerdictWords,
        chosen: &Chosen,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        let at = self.prefill_s + self.started.elapsed().as_secs_f64();
        self.first_token.get_or_insert(at);
        let delta = self.detokenizer.push(tokenizer, chosen.id)?;
        self.text(words, Some(chosen), &delta, on_event)
    }

    fn finish(
        mut self,
        tokenizer: &TextTokenizer,
        stop: Stop,
        new_tokens: usize,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let tail = self.detokenizer.finish(tokenizer)?;
        self.text(&VerdictWords::default(), None, &tail, on_event)?;
        let events = self.reader.finish();
        self.pass_on(events, on_event)?;
        let result = self.reader.result();
        let ran = self.prompt_tokens - self.reused_tokens.min(self.prompt_tokens);
        let scores = self.reader.scores();
        let thresholds = self.ask.thresholds;
        let verdict = |task: Task| thresholds.apply(task, result.verdict(task), scores.get(task));
        Ok(Classification {
            request: verdict(Task::PromptHarmfulness),
            completion: verdict(Task::Refusal),
            response: verdict(Task::ResponseHarmfulness),
            scores,
            verdict_found: self.verdict_found,
            problem: (!self.verdict_found).then(|| no_verdict_problem(stop, new_tokens)),
            tasks: result.tasks.clone(),
            text: self.text,
            prompt_tokens: self.prompt_tokens,
            reused_tokens: self.reused_tokens,
            new_tokens,
            stop,
            verdict_first: self.ask.verdict_first,
            timings: Timings::measure(
                self.prefill_s + self.started.elapsed().as_secs_f64(),
                self.first_token,
                ran,
                new_tokens,
            )
            .with_verdict_at(self.first_verdict),
        })
    }
}

/// A loaded model, ready to run. One run at a time (`&mut self`).
pub struct Session {
    engine: AnyEngine,
    tokenizer: TextTokenizer,
    backend: String,
    fallback: Option<String>,
    identity: ModelIdentity,
}

impl Session {
    /// Loads `model` onto the chosen backend with a KV cache of `context` tokens (capped by the
    /// model's) for one conversation at a time. `progress(done_bytes, total_bytes)` while
    /// tensors load. With `Device::Auto` a GPU that is a CPU emulation, cannot be set up or cannot
    /// hold the model leaves the CPU, and `fallback` says why.
    pub async fn load(
        model: OpenedModel,
        choice: BackendChoice,
        context: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        Self::load_batched(model, choice, context, 1, progress).await
    }

    /// As `load`, with a KV cache for `batch` conversations of `context` tokens each, decoded
    /// together (`classify_many`). On the CPU the cache is budgeted before any weight loads, on
    /// the GPU when it is allocated: one that cannot fit fails with the sizes and the options to
    /// lower.
    pub async fn load_batched(
        model: OpenedModel,
        choice: BackendChoice,
        context: usize,
        batch: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let OpenedModel { mut files, tokenizer, identity } = model;
        let context = context.max(1);
        let batch = batch.clamp(1, MAX_BATCH);
        let mut fallback = None;
        if choice.device != Device::Cpu {
            let loaded = load_on_gpu(&mut files, choice, context, batch, progress).await;
            match loaded {
                Ok(GpuLoad::Loaded(engine)) => {
                    let backend = on_engine!(&engine, e => e.backend.describe());
                    return Ok(Self { engine, tokenizer, backend, fallback, identity });
                }
                Ok(GpuLoad::Emulated(adapter)) => {
                    fallback = Some(format!(
                        "passed over the GPU adapter ({adapter}): it emulates a GPU on the CPU, slower than \
                         the CPU backend; running on the CPU (ask for the GPU backend to use it)"
                    ))
                }
                Err(e) if choice.device == Device::Auto => {
                    fallback = Some(format!("the GPU failed ({e}): running on the CPU"))
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(kernel) = cpu_kernel_from_env()? {
            cpu_blocks::set_kernel(Some(kernel)).map_err(Error::Other)?;
        }
        // The CPU's KV cache is host memory: budget it before any weight loads.
        check_cache_budget(&files.config, files.weight_bytes(), context, batch)?;
        let cpu = CpuBackend::new(choice.quant.cpu());
        let weights = files.load(&cpu, progress)?;
        let engine = Engine::new(cpu, files.config.clone(), weights, context, batch, PREFIX_MAX)?;
        let backend = engine.backend.describe();
        Ok(Self { engine: AnyEngine::Cpu(engine), tokenizer, backend, fallback, identity })
    }

    /// "cpu (candle, 2 threads)", "gpu (<adapter>)", ...
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Why the CPU runs although a GPU was wanted (`Device::Auto`), else None.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// What the loaded model is, by content.
    pub fn model_identity(&self) -> &ModelIdentity {
        &self.identity
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokens the KV cache holds for one conversation (prompt + new tokens).
    pub fn context_len(&self) -> usize {
        on_engine!(&self.engine, e => e.context_len())
    }

    /// Conversations the KV cache holds at once (`load_batched`).
    pub fn batch(&self) -> usize {
        on_engine!(&self.engine, e => e.slots())
    }

    /// A function that destroys the GPU device as a driver reset would
    /// (`GpuBackend::device_destroyer`), for tests of what follows a lost GPU; every later run
    /// fails with `Error::GpuLost`. None on the CPU.
    pub fn gpu_device_destroyer(&self) -> Option<Box<dyn Fn()>> {
        match &self.engine {
            #[cfg(feature = "gpu")]
            AnyEngine::Gpu(e) => Some(Box::new(e.backend.device_destroyer())),
            AnyEngine::Cpu(_) => None,
        }
    }

    /// Bytes of device buffers (GPU), where there is a device.
    pub fn device_bytes(&self) -> Option<u64> {
        on_engine!(&self.engine, e => e.backend.device_bytes())
    }

    /// Greedy generation from prompt ids, stopping at any EOS id of the model (unless
    /// `ignore_eos`), the token limit, a full context, or `is_cancelled()` (polled before every
    /// token; a cancelled run returns what it made with `Stop::Cancelled`). `on_token(Some(id),
    /// text_delta)` sees every new token with the text it completes (often empty mid-character),
    /// and `on_token(None, rest)` the text left at the end, if any.
    pub async fn generate(
        &mut self,
        ids: &[u32],
        options: &RunOptions,
        is_cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(Option<u32>, &str) -> Result<()>,
    ) -> Result<Generated> {
        let started = Instant::now();
        let mut first_token = None;
        let mut tokens = Vec::new();
        let mut reused = 0;
        let mut detokenizer = Detokenizer::new();
        let tokenizer = &self.tokenizer;
        let outcome = on_engine!(&mut self.engine, engine => {
            let generate_options = GenerateOptions {
                max_new_tokens: options.max_new_tokens,
                stop_ids: if options.ignore_eos { Vec::new() } else { engine.config.eos_token_ids.clone() },
                keep_first_logits: options.keep_first_logits,
            };
            engine.watch(&[])?;
            generate(engine, ids, &generate_options, is_cancelled, &mut |progress| match progress {
                Progress::PromptDone { reused_tokens, .. } => {
                    reused = reused_tokens;
                    Ok(())
                }
                Progress::Token(chosen) => {
                    first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    tokens.push(chosen.id);
                    let delta = detokenizer.push(tokenizer, chosen.id)?;
                    on_token(Some(chosen.id), &delta)
                }
            })
            .await
        });
        let (stop, first_logits) = match outcome {
            Ok(generation) => (Stop::from(generation.stop), generation.first_logits),
            Err(Error::Cancelled) => (Stop::Cancelled, None),
            Err(e) => return Err(e),
        };
        let tail = detokenizer.finish(tokenizer)?;
        if !tail.is_empty() {
            on_token(None, &tail)?;
        }
        let timings = Timings::measure(
            started.elapsed().as_secs_f64(),
            first_token,
            ids.len() - reused.min(ids.len()),
            tokens.len(),
        );
        Ok(Generated { prompt_tokens: ids.len(), reused_tokens: reused, stop, timings, first_logits, tokens })
    }

    /// Classifies a conversation: the GuardReasoner prompt of `prompt` and `response` (the model
    /// sees `None` without one), then as `classify`.
    pub async fn moderate(
        &mut self,
        prompt: &str,
        response: Option<&str>,
        options: &RunOptions,
        is_cancelled: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let text = checked_guard_prompt(prompt, response).map_err(Error::Prompt)?;
        self.classify(&text, options, is_cancelled, on_event).await
    }

    /// Runs a complete GuardReasoner prompt text (instruction and conversation, as the benchmark
    /// files hold it; BOS is added here), streaming each text delta and the reasoning events it
    /// completes, and returns the verdicts, the reasoning, the text and the counts. The same
    /// path as one item of `classify_many`, so the answer is the same byte for byte.
    pub async fn classify(
        &mut self,
        text: &str,
        options: &RunOptions,
        is_cancelled: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let mut item = Some(ClassifyItem::new(0, text.to_string()));
        let mut result = None;
        self.classify_many(
            1,
            &mut || Ok(item.take()),
            options,
            &|_| is_cancelled(),
            &mut |_, event| on_event(event),
            &mut |_, classification| {
                result = Some(classification);
                Ok(())
            },
        )
        .await?;
        result.ok_or(Error::Cancelled)?
    }

    /// Classifies many GuardReasoner prompt texts, up to `batch` at once (at most the batch the
    /// session was loaded for), decoded together with continuous batching (`batch::run_batch`):
    /// `next` gives an item whenever a slot is free, `on_event(item, event)` streams each
    /// item's deltas and reasoning events, `on_done(item, result)` gives each result as its item
    /// finishes (not in order), or the error that kept it from starting (`Error::Prompt`: too
    /// long for the context, ...; the others go on). Every item's answer is the one `classify`
    /// gives it alone. `is_cancelled(item)` is polled before every step: a cancelled item ends as
    /// `Stop::Cancelled` (passed to `on_done`) and the others go on.
    pub async fn classify_many(
        &mut self,
        batch: usize,
        next: &mut dyn FnMut() -> Result<Option<ClassifyItem>>,
        options: &RunOptions,
        is_cancelled: &dyn Fn(usize) -> bool,
        on_event: &mut dyn FnMut(usize, ClassifyEvent) -> Result<()>,
        on_done: &mut dyn FnMut(usize, Result<Classification>) -> Result<()>,
    ) -> Result<BatchStats> {
        let prefix = self.tokenizer.encode_prompt(&shared_prefix())?;
        let tokenizer = &self.tokenizer;
        let vocab = on_engine!(&self.engine, e => e.config.vocab_size);
        let words = if options.scores { VerdictWords::new(tokenizer, vocab)? } else { VerdictWords::default() };
        let mut items: std::collections::HashMap<usize, ItemRun> = std::collections::HashMap::new();
        let asks: std::cell::RefCell<std::collections::HashMap<usize, ItemAsk>> = Default::default();
        let run_ask = ItemAsk { verdict_first: options.verdict_first, thresholds: options.thresholds };
        let mut pull = || -> Result<Option<(usize, Request)>> {
            let Some(item) = next()? else { return Ok(None) };
            let ask = ItemAsk {
                verdict_first: item.verdict_first.unwrap_or(options.verdict_first),
                thresholds: item.thresholds.unwrap_or(options.thresholds),
            };
            let mut max_new_tokens = item.max_new_tokens.unwrap_or(options.max_new_tokens);
            let ids = if ask.verdict_first {
                max_new_tokens = max_new_tokens.min(VERDICT_FIRST_TOKENS);
                tokenizer.encode_prompt(&format!("{}{ANSWER_HEADER}", item.text))?
            } else {
                tokenizer.encode_prompt(&item.text)?
            };
            asks.borrow_mut().insert(item.index, ask);
            Ok(Some((item.index, Request { ids, max_new_tokens })))
        };
        // Verdict-first items whose last answer line was read: ended like a cancel, reported as
        // `Stop::Answered` (not when EOS is ignored: speed tests run their full count).
        let answered: std::cell::RefCell<std::collections::HashSet<usize>> = Default::default();
        let stop_early = |item: usize| is_cancelled(item) || answered.borrow().contains(&item);
        let mut handle = |event: BatchEvent| -> Result<()> {
            match event {
                BatchEvent::Started { item, prompt_tokens, reused_tokens, prefill_s, .. } => {
                    let ask = asks.borrow_mut().remove(&item).unwrap_or(run_ask);
                    let mut run = ItemRun::new(prompt_tokens, reused_tokens, prefill_s, ask);
                    if ask.verdict_first {
                        // The header the model was given reads as if it had written it.
                        run.text(&words, None, ANSWER_HEADER, &mut |e| on_event(item, e))?;
                    }
                    items.insert(item, run);
                }
                BatchEvent::Token { item, chosen } => {
                    if let Some(run) = items.get_mut(&item) {
                        run.token(tokenizer, &words, &chosen, &mut |e| on_event(item, e))?;
                        if run.answered && run.ask.verdict_first && !options.ignore_eos {
                            answered.borrow_mut().insert(item);
                        }
                    }
                }
                BatchEvent::Finished { item, stop, new_tokens } => {
                    // An item cancelled before its prompt ran has no run yet: an empty one.
                    let ask = asks.borrow_mut().remove(&item).unwrap_or(run_ask);
                    let run = items.remove(&item).unwrap_or_else(|| ItemRun::new(0, 0, 0.0, ask));
                    let stop = match (answered.borrow_mut().remove(&item), Stop::from(stop)) {
                        (true, Stop::Cancelled) => Stop::Answered,
                        (_, stop) => stop,
                    };
                    on_done(item, Ok(run.finish(tokenizer, stop, new_tokens, &mut |e| on_event(item, e))?))?;
                }
                BatchEvent::Failed { item, error } => {
                    asks.borrow_mut().remove(&item);
                    on_done(item, Err(Error::Prompt(error)))?
                }
            }
            Ok(())
        };
        on_engine!(&mut self.engine, engine => {
            let stop_ids = if options.ignore_eos { Vec::new() } else { engine.config.eos_token_ids.clone() };
            engine.share_prefix(&prefix)?;
            engine.watch(words.ids())?;
            if batch > 1 && engine.slots() > 1 {
                return run_batch(engine, batch, &mut pull, &stop_ids, &stop_early, &mut handle).await;
            }
            // One at a time: the same arithmetic, with the device running ahead of the host
            // (`generate::Pipeline`).
            let mut stats = BatchStats::default();
            while let Some((item, request)) = pull()? {
                let opts = GenerateOptions {
                    max_new_tokens: request.max_new_tokens,
                    stop_ids: stop_ids.clone(),
                    keep_first_logits: false,
                };
                stats.items += 1;
                let began = Instant::now();
                let mut new_tokens = 0usize;
                let outcome = generate_in(engine, &request.ids, true, &opts, &|| stop_early(item), &mut |p| match p {
                    Progress::PromptDone { prompt_tokens, reused_tokens } => handle(BatchEvent::Started {
                        item,
                        slot: 0,
                        prompt_tokens,
                        reused_tokens,
                        prefill_s: began.elapsed().as_secs_f64(),
                        refill: false,
                    }),
                    Progress::Token(chosen) => {
                        new_tokens += 1;
                        handle(BatchEvent::Token { item, chosen })
                    }
                })
                .await;
                let stop = match outcome {
                    Ok(generation) => generation.stop,
                    Err(Error::Cancelled) => StopReason::Cancelled,
                    Err(Error::Prompt(error)) => {
                        handle(BatchEvent::Failed { item, error })?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                stats.steps += new_tokens.saturating_sub(1);
                stats.decode_rows += new_tokens.saturating_sub(1);
                stats.most_in_flight = 1;
                handle(BatchEvent::Finished { item, stop, new_tokens })?;
            }
            Ok(stats)
        })
    }

    /// Decode speed of `batch` sequences (at most the session's batch) stepping together: each
    /// runs `prompt` into its own slot, then `gen_tokens` steps advance all of them a token each
    /// (greedy, EOS ignored, each token read before the next step, as batched runs do). After a
    /// warm-up; the cache is reset.
    pub async fn batch_speed_test(&mut self, prompt: &[u32], gen_tokens: usize, batch: usize) -> Result<BatchSpeed> {
        on_engine!(&mut self.engine, engine => {
            let batch = batch.clamp(1, engine.slots());
            if prompt.is_empty() || prompt.len() + gen_tokens + 1 > engine.context_len() {
                return Err(Error::Prompt(format!(
                    "a speed test of {} prompt + {gen_tokens} new tokens does not fit the context of {}; raise the context size",
                    prompt.len(),
                    engine.context_len()
                )));
            }
            engine.share_prefix(&[])?;
            // The scheduler predict runs, EOS ignored. A warm-up run of two tokens each (the
            // batch's pipelines and buffers); a run of the prompts alone (one token each), whose
            // device work is taken off the timed run's to count the decode steps alone; then the
            // timed run, clocked from the moment every sequence has its first token (prompts
            // done) to its end.
            let requests = |n: usize| (0..batch).map(move |i| (i, Request { ids: prompt.to_vec(), max_new_tokens: n }));
            let mut warm = requests(2);
            run_batch(engine, batch, &mut || Ok(warm.next()), &[], &|_| false, &mut |_| Ok(())).await?;
            let c0 = engine.backend.counters();
            let mut prompts = requests(1);
            run_batch(engine, batch, &mut || Ok(prompts.next()), &[], &|_| false, &mut |_| Ok(())).await?;
            let c1 = engine.backend.counters();
            let mut timed = requests(gen_tokens + 1);
            let (mut first, mut started, mut t0) = (vec![false; batch], 0, Instant::now());
            let stats = run_batch(engine, batch, &mut || Ok(timed.next()), &[], &|_| false, &mut |event| {
                if let BatchEvent::Token { item, .. } = event
                    && !first[item]
                {
                    first[item] = true;
                    started += 1;
                    if started == batch {
                        t0 = Instant::now();
                    }
                }
                Ok(())
            })
            .await?;
            let decode_s = t0.elapsed().as_secs_f64();
            let c2 = engine.backend.counters();
            engine.reset();
            // Decode steps' work: the timed run less a run of its prompts alone.
            let work = match (c0, c1, c2) {
                (Some(c0), Some(c1), Some(c2)) => Some(c2.since(&c1).since(&c1.since(&c0))),
                _ => None,
            };
            let per_step = work.map(|w| per_step(&w, stats.steps));

            Ok(BatchSpeed {
                batch,
                gen_tokens,
                decode_s,
                aggregate_decode_tokens_per_s: (batch * gen_tokens) as f64 / decode_s,
                per_sequence_decode_tokens_per_s: gen_tokens as f64 / decode_s,
                per_step,
            })
        })
    }

    /// The GuardReasoner prompt of the time-to-verdict test's chat message, its request and
    /// response cut to their token counts under this model's tokenizer.
    pub fn bench_message(&self) -> Result<String> {
        let cut = |text: &str, n: usize| -> Result<String> {
            let ids = self.tokenizer.encode_text(text)?;
            self.tokenizer.decode(&ids[..n.min(ids.len())])
        };
        let request = cut(BENCH_REQUEST, BENCH_REQUEST_TOKENS)?;
        let response = cut(BENCH_RESPONSE, BENCH_RESPONSE_TOKENS)?;
        Ok(crate::guard::guard_prompt(&request, Some(&response)))
    }

    /// Time to verdict on a conversation (its whole GuardReasoner prompt `text`), as a chat page
    /// meets it: the instruction's KV computed once before (a warm-up run), then a verdict-first
    /// run to the first verdict (`FIRST_ANSWER_TOKENS` new tokens), one to all three
    /// (`ANSWER_TOKENS`) and a reasoning run of `TOKENS_TO_VERDICT`, EOS ignored
    /// (a stand-in model's random weights write no verdict: the counts are the real model's),
    /// scores read as in any classification.
    pub async fn verdict_speed_test(&mut self, text: &str) -> Result<VerdictSpeed> {
        let mut run = async |verdict_first: bool, tokens: usize| -> Result<Classification> {
            let mut options = RunOptions::new(tokens);
            options.ignore_eos = true;
            options.verdict_first = verdict_first;
            let result = self.classify(text, &options, &|| false, &mut |_| Ok(())).await?;
            if result.new_tokens != tokens {
                return Err(Error::Prompt(format!(
                    "the time-to-verdict test needs {tokens} new tokens after the prompt of {}; raise the context size",
                    result.prompt_tokens
                )));
            }
            Ok(result)
        };
        run(true, 2).await?;
        let request = run(true, FIRST_ANSWER_TOKENS).await?;
        let first = run(true, ANSWER_TOKENS).await?;
        let reasoning = run(false, TOKENS_TO_VERDICT).await?;
        Ok(VerdictSpeed {
            prompt_tokens: reasoning.prompt_tokens,
            reused_tokens: reasoning.reused_tokens,
            first_verdict_seconds: request.timings.total_seconds,
            verdict_first_seconds: first.timings.total_seconds,
            verdict_first_tokens: first.new_tokens,
            reasoning_seconds: reasoning.timings.total_seconds,
            reasoning_tokens: reasoning.new_tokens,
        })
    }

    /// Prefill speed on `prompt`, then decode speed over `gen_tokens` greedy steps (EOS ignored),
    /// after a short warm-up (pipeline compilation, first allocations). The cache is reset.
    /// `scores`: each step keeps the verdict words' logits, as classifications do.
    pub async fn speed_test(&mut self, prompt: &[u32], gen_tokens: usize, scores: bool) -> Result<SpeedReport> {
        let vocab = on_engine!(&self.engine, e => e.config.vocab_size);
        let words = if scores { VerdictWords::new(&self.tokenizer, vocab)? } else { VerdictWords::default() };
        on_engine!(&mut self.engine, engine => {
            engine.watch(words.ids())?;
            if prompt.is_empty() || prompt.len() + gen_tokens > engine.context_len() {
                return Err(Error::Prompt(format!(
                    "a speed test of {} prompt + {gen_tokens} new tokens does not fit the context of {}; raise the context size",
                    prompt.len(),
                    engine.context_len()
                )));
            }
            let (logits, _) = engine.prefill(&prompt[..prompt.len().min(8)])?;
            engine.backend.argmax(&logits).await?;
            drop(logits);
            engine.reset();
            let t0 = Instant::now();
            let (logits, _) = engine.prefill(prompt)?;
            let mut pipe = Pipeline::new(engine, &logits)?;
            drop(logits);
            pipe.next(engine).await?;
            let prefill_s = t0.elapsed().as_secs_f64();
            let before = engine.backend.counters();
            let t1 = Instant::now();
            for _ in 0..gen_tokens {
                pipe.fill(engine, gen_tokens + 1)?;
                pipe.next(engine).await?;
            }
            let decode_s = t1.elapsed().as_secs_f64();
            let after = engine.backend.counters();
            engine.reset();
            let n = gen_tokens as f64;
            let per_token = before.zip(after).map(|(b, a)| per_step(&a.since(&b), gen_tokens));
            let host_encode_us_per_token = match (before, after) {
                (Some(b), Some(a)) => Some((decode_s * 1e6 - (a.wait_us - b.wait_us) - (a.submit_us - b.submit_us)) / n),
                _ => None,
            };
            Ok(SpeedReport { prompt_tokens: prompt.len(), prefill_s, gen_tokens, decode_s, per_token, host_encode_us_per_token })
        })
    }
}

/// Work counted over `steps` steps, per step.
fn per_step(w: &crate::backend::Counters, steps: usize) -> PerToken {
    let n = steps.max(1) as f64;
    PerToken {
        dispatches: w.dispatches as f64 / n,
        compute_passes: w.compute_passes as f64 / n,
        submits: w.submits as f64 / n,
        copies: w.copies as f64 / n,
        readback_copies: w.readback_copies as f64 / n,
        blocking_waits: w.blocking_waits as f64 / n,
        submit_us: w.submit_us / n,
    }
}

/// The model on the GPU for `Session::load_batched`: the weights uploaded and the KV cache
/// allocated inside the device's error scopes, whose verdict the load awaits.
#[cfg(feature = "gpu")]
async fn load_on_gpu(
    files: &mut ModelFiles,
    choice: BackendChoice,
    context: usize,
    batch: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GpuLoad> {
    let options = GpuOptions {
        quant: choice.quant.gpu(),
        linear: choice.linear,
        f16: choice.gpu_f16,
        max_rows: PREFILL_CHUNK,
        max_binding_bytes: choice.gpu_max_binding_bytes,
        fused: std::env::var_os("GUARDREASONER_GPU_UNFUSED").is_none(),
        debug: std::env::var_os("GUARDREASONER_GPU_DEBUG").is_some(),
        ..GpuOptions::default()
    };
    let gpu = GpuBackend::new(options).await?;
    let refuse = choice.gpu_refuse_buffer || std::env::var_os("GUARDREASONER_GPU_REFUSE_BUFFER").is_some();
    // `auto` means the fastest path that works, and a GPU emulated on the CPU is slower than the
    // CPU backend. A test hook that makes the GPU fail (a refused buffer, a smaller binding limit)
    // asks for the GPU path all the same, so that the fallback after a failure stays testable
    // without a real GPU.
    if choice.device == Device::Auto && gpu.is_emulated() && !refuse && choice.gpu_max_binding_bytes.is_none() {
        return Ok(GpuLoad::Emulated(gpu.adapter_name().to_string()));
    }
    // A browser reports a buffer it could not allocate after the load has gone on; the device's
    // verdict on the load's buffers comes first, as what failed after a refused buffer follows
    // from it.
    let scopes = gpu.load_scopes();
    if refuse {
        gpu.request_refused_buffer();
    }
    let loaded = files
        .load(&gpu, progress)
        .and_then(|weights| Engine::new(gpu, files.config.clone(), weights, context, batch, PREFIX_MAX));
    let what =
        format!("the model ({} MiB of weights, a KV cache of {context} tokens x {batch})", files.weight_bytes() >> 20);
    scopes.finish(&what).await.and(loaded).map(|e| GpuLoad::Loaded(AnyEngine::Gpu(e)))
}

/// What loading onto the GPU gave.
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
#[allow(clippy::large_enum_variant)] // once per load, moved straight into the session
enum GpuLoad {
    Loaded(AnyEngine),
    /// `auto` passed over the adapter, a CPU emulation (named).
    Emulated(String),
}

/// Without the `gpu` feature there is no GPU to load onto (`auto` then runs on the CPU).
#[cfg(not(feature = "gpu"))]
async fn load_on_gpu(
    _files: &mut ModelFiles,
    _choice: BackendChoice,
    _context: usize,
    _batch: usize,
    _progress: &mut dyn FnMut(u64, u64),
) -> Result<GpuLoad> {
    Err(Error::Other("this build has no GPU backend (it was built without the `gpu` feature)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The KV cache alone may fit where the cache and the working memory of a prompt read at that
    /// length do not: the budget counts both and says so, naming the knobs.
    #[test]
    fn the_memory_budget_counts_a_prompts_working_memory_beside_the_cache() {
        let config = crate::config::LlamaConfig::from_hf_json(&crate::synth::hf_config().to_string(), None).unwrap();
        let context = 16384;
        let cache = Engine::<CpuBackend>::cache_bytes(&config, context, 1, PREFIX_MAX);
        let scratch = crate::backend::cpu::forward_scratch_bytes(&config, context as u64, PREFILL_CHUNK as u64, 1);
        // A 128-row chunk's layer activations (its 3 x 8192 feed-forward values a row)
        // dominate: attention holds one head's scores per thread, never a (heads, rows,
        // positions) tensor of them.
        assert!(scratch > 4 * 128 * 3 * 8192 && scratch < 32 * 128 * 16384 * 4 / 4, "{scratch}");
        assert!(check_budget_within(&config, context, 1, cache + scratch).is_ok());
        let msg = check_budget_within(&config, context, 1, cache + scratch / 2).unwrap_err().to_string();
        assert!(msg.contains("a KV cache of 16384 tokens for 1 conversation needs 1.0"), "{msg}");
        assert!(msg.contains("reading a prompt that long 0.") && msg.contains("--context, --batch"), "{msg}");
        // What would fit: the longest context within the limit, and one more position is over it.
        let most: usize = msg.rsplit_once("at most ").unwrap().1.split(' ').next().unwrap().parse().unwrap();
        assert!(msg.ends_with(&format!("a context of at most {most} tokens fits at this batch")), "{msg}");
        assert!(check_budget_within(&config, most, 1, cache + scratch / 2).is_ok());
        assert!(check_budget_within(&config, most + 1, 1, cache + scratch / 2).is_err());
        let none = check_budget_within(&config, 4096, 1, 1 << 20).unwrap_err().to_string();
        assert!(none.contains("not even a context of 1 fits") && none.contains("--quant q4"), "{none}");
        // A context that fits, and a batch that does not.
        assert!(check_budget_within(&config, 4096, 1, cache + scratch / 2).is_ok());
        assert!(check_budget_within(&config, 4096, 16, cache + scratch / 2).is_err());
    }

    #[test]
    fn every_spelling_of_a_choice_maps_to_one_value() {
        for (words, quant) in [
            (["none", "f32", "F32"], Quant::None),
            (["q8", "q8_0", "Q8_0"], Quant::Q8),
            (["q4", "q4_0", " q4 "], Quant::Q4),
        ] {
            for word in words {
                assert_eq!(Quant::parse(word).unwrap(), quant, "{word}");
            }
        }
        for (word, device) in [
            ("cpu", Device::Cpu),
            ("gpu", Device::Gpu),
            ("webgpu", Device::Gpu),
            ("WebGPU", Device::Gpu),
            ("auto", Device::Auto),
        ] {
            assert_eq!(Device::parse(word).unwrap(), device, "{word}");
        }
        assert_eq!(parse_linear_kernel("row-per-thread").unwrap(), LinearKernel::RowPerThread);
    }

    #[test]
    fn unknown_words_are_refused_by_name() {
        for (err, word) in [
            (Quant::parse("q5").unwrap_err(), "q5"),
            (Quant::parse("").unwrap_err(), ""),
            (Device::parse("tpu").unwrap_err(), "tpu"),
            (parse_linear_kernel("fast").unwrap_err(), "fast"),
        ] {
            assert!(err.to_string().contains(&format!("`{word}`")), "{err}");
        }
    }

    #[test]
    fn a_missing_verdict_names_the_stop_and_the_knob() {
        assert!(no_verdict_problem(Stop::MaxTokens, 48).contains("raise it (--max-new-tokens"));
        assert!(no_verdict_problem(Stop::ContextFull, 10).contains("--context"));
        assert!(no_verdict_problem(Stop::Eos, 10).contains("without a verdict line"));
    }
}
