//! One loaded model for every front door (the CLI, the wasm facade, the evaluators): the backend
//! the user chose, the engine and tokenizer behind one backend-erased type, and the operations
//! they all need (`generate`, `classify`, `speed_test`) with stop ids, cancellation, the guard
//! parser and timings handled once. See ARCHITECTURE.md §5. The user's choices, the memory budget,
//! the results, classification and the speed tests each have a file of this folder.

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::cpu_blocks;
#[cfg(feature = "gpu")]
use crate::backend::gpu::{GpuBackend, GpuOptions};
use crate::engine::{Engine, PREFILL_CHUNK, PREFIX_MAX};
use crate::error::{Error, Result};
use crate::generate::{Detokenizer, GenerateOptions, Progress, generate};
use crate::loader::{ModelIdentity, OpenedModel};
use crate::model::ModelFiles;
use crate::tokenizer::TextTokenizer;
use budget::check_cache_budget;
use web_time::Instant;

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

mod budget;
mod choices;
mod classify;
mod results;
mod speed;

pub use choices::{
    BackendChoice, DEFAULT_CONTEXT, Device, Quant, cpu_kernel_from_env, parse_linear_kernel, word_name, word_value,
};
pub use results::{
    Classification, ClassifyEvent, ClassifyItem, DEFAULT_MAX_NEW_TOKENS, Generated, MODES, RunOptions, Stop, Timings,
    verdict_first_mode,
};
pub use speed::{
    ANSWER_TOKENS, BENCH_REQUEST_TOKENS, BENCH_RESPONSE_TOKENS, BatchSpeed, FIRST_ANSWER_TOKENS, PerToken, SpeedReport,
    TOKENS_TO_VERDICT, VerdictSpeed,
};

/// Most new tokens a verdict-first run writes: its three answer lines (`unharmful`, `None`,
/// `compliance`, ...) take about a dozen.
pub const VERDICT_FIRST_TOKENS: usize = 24;

/// Most conversations one session decodes together (the GPU's activation rows bound it).
pub const MAX_BATCH: usize = PREFILL_CHUNK;

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
