//! What the commands share: the model and backend options, opening a session with a progress
//! bar, the Ctrl-C flag, and the exit codes. Each command lives in its own file here; `main.rs`
//! only parses and dispatches.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod moderate;
pub mod predict;
pub mod synth;
pub mod tokenize;

use anyhow::{Context, Result};
use clap::Args;
use guardreasoner::backend::gpu::LinearKernel;
use guardreasoner::batch::BatchStats;
use guardreasoner::loader::{OpenedModel, open_path};
use guardreasoner::session::{
    BackendChoice, Classification, ClassifyItem, Device, Quant, RunOptions, Session, Stop, parse_linear_kernel,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit codes (also in the README): 0 done, 1 error, 2 bad usage (clap's), 3 a classification
/// found no verdict, 130 interrupted (Ctrl-C) or 143 (SIGTERM is not caught: the shell's).
pub const EXIT_NO_VERDICT: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Where the model comes from.
#[derive(Args, Clone)]
pub struct ModelSource {
    /// Model: an HF-style folder (config.json, tokenizer.json, *.safetensors), a .gguf file, or
    /// a Hugging Face repo id (owner/name, e.g. yueliu1999/GuardReasoner-1B): taken from the
    /// local Hugging Face cache when it is there (no network), else downloaded into it
    /// (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE honoured; a broken
    /// download resumes where it stopped).
    #[arg(long, short = 'm')]
    pub model: String,
    /// With a repo id: the branch, tag or commit to use.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

impl ModelSource {
    /// Opens the model, downloading it first when it is a repo id not in the cache (with a
    /// progress bar per file on stderr).
    pub fn open(&self) -> Result<OpenedModel> {
        self.open_with(true)
    }

    /// As `open`; `progress` false downloads without progress bars (`--quiet`).
    pub fn open_with(&self, progress: bool) -> Result<OpenedModel> {
        let path = resolve_model(&self.model, &self.revision, progress)?;
        open_path(&path).with_context(|| format!("opening model {}", path.display()))
    }
}

/// The model, and how it runs: every command that runs the model takes these.
#[derive(Args, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// No progress bar or backend line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Where it runs: cpu, gpu (WebGPU through wgpu: Vulkan natively; `webgpu` also accepted) or
    /// auto (a GPU when one loads, else the CPU; a GPU emulated on the CPU, like Mesa's lavapipe,
    /// is passed over as slower than the CPU backend).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub backend: Device,
    /// Float weights once loaded: q8 (8-bit blocks, near-lossless; the default, as in the
    /// browser), q4 (4-bit, faster still, some accuracy cost) or none (the file's own types, with
    /// f32 math: exact, for reproducing reference runs; f16 held as f32). Also f32, q8_0, q4_0. Quantized GGUF
    /// weights keep their own types. On a GuardReasoner-1B-shaped bf16 folder, 2 CPU cores: q8
    /// decodes about 18 tokens/s with a 1.85 GiB peak, q4 about 27 with 1.68 GiB, none about
    /// 13 with 2.43 GiB.
    #[arg(long, default_value = "q8", value_parser = parse_quant)]
    pub quant: Quant,
    /// KV cache size in tokens (prompt + new tokens) of one conversation; capped by the model's
    /// context. Default: what the request needs (its prompt + --max-new-tokens) for moderate and
    /// generate, 4096 for predict and bench (a benchmark run binds its folder to it).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    pub context: Option<u32>,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't', value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// GPU matrix kernel: auto (one thread per row on adapters that run on the CPU, like
    /// lavapipe; 32 threads per row on real GPUs), cooperative or row-per-thread.
    #[arg(long, default_value = "auto", value_parser = parse_linear)]
    pub gpu_linear: LinearKernel,
    /// Keep the GPU's matrix products in f32 where the adapter offers shader-f16. By default a
    /// real GPU's matrix kernel multiplies 8-bit, 4-bit and f16 weights in f16, four products at
    /// a time summed in f32 (logits move by up to about 0.3 % of their range); f32 weights, CPU
    /// emulations and the browser without shader-f16 always compute in f32.
    #[arg(long)]
    pub no_gpu_f16: bool,
}

/// A count that must be at least 1 (`--max-new-tokens 0` would run nothing and report "no
/// verdict"; `--limit 0` would run nothing at all).
pub fn positive(word: &str) -> Result<usize, String> {
    match word.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_device(word: &str) -> Result<Device, String> {
    Device::parse(word).map_err(|e| e.to_string())
}

fn parse_quant(word: &str) -> Result<Quant, String> {
    Quant::parse(word).map_err(|e| e.to_string())
}

fn parse_linear(word: &str) -> Result<LinearKernel, String> {
    parse_linear_kernel(word).map_err(|e| e.to_string())
}

pub use guardreasoner::session::DEFAULT_CONTEXT;

impl ModelArgs {
    /// `--context`, else `need` (what the request at hand needs: prompt + new tokens), else
    /// `DEFAULT_CONTEXT`.
    pub fn context_or(&self, need: Option<usize>) -> usize {
        self.context.map(|c| c as usize).or(need).unwrap_or(DEFAULT_CONTEXT).max(1)
    }

    pub fn choice(&self) -> BackendChoice {
        BackendChoice {
            device: self.backend,
            quant: self.quant,
            linear: self.gpu_linear,
            gpu_f16: !self.no_gpu_f16,
            ..BackendChoice::default()
        }
    }

    /// Opens the model (downloading a repo id not in the cache; progress bars unless `--quiet`).
    pub fn open(&self) -> Result<OpenedModel> {
        self.source.open_with(!self.quiet)
    }

    /// Loads an opened model onto the chosen backend, with a KV cache of `context` tokens for
    /// each of `batch` conversations decoded together, and a progress bar on stderr.
    pub fn load_batched(&self, model: OpenedModel, batch: usize, context: usize) -> Result<Session> {
        if let Some(n) = self.threads {
            // SAFETY: single-threaded here, before any thread pool exists.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        }
        if self.backend != Device::Cpu && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            // SAFETY: as above. Silences a harmless Vulkan loader warning.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
        }
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(model.files.weight_bytes())
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        let session =
            pollster::block_on(Session::load_batched(model, self.choice(), context, batch, &mut |done, _| {
                bar.set_position(done)
            }))?;
        bar.finish_and_clear();
        if !self.quiet {
            match session.batch() {
                1 => eprintln!("backend: {}; KV cache of {} tokens", session.backend(), session.context_len()),
                n => eprintln!(
                    "backend: {} (batch of {n}); KV cache of {} tokens each",
                    session.backend(),
                    session.context_len()
                ),
            }
            if let Some(note) = session.fallback() {
                eprintln!("note: {note}");
            }
        }
        Ok(session)
    }
}

/// Runs `texts` (complete GuardReasoner prompts) through the session's batch (continuous
/// batching) and hands each result to `on_result(index, result)` in order: one that finishes early
/// waits for those before it. An error from `on_result` ends the run. After Ctrl-C no new text
/// starts and those in flight end; the second value says whether that happened.
pub fn classify_in_order(
    session: &mut Session,
    texts: &[&str],
    options: &RunOptions,
    on_result: &mut dyn FnMut(usize, guardreasoner::Result<Classification>) -> Result<()>,
) -> guardreasoner::Result<(BatchStats, bool)> {
    let mut finished = BTreeMap::new();
    let mut next_out = 0;
    let mut interrupted = false;
    let mut queue = texts.iter().enumerate();
    let batch = session.batch();
    let stats = pollster::block_on(session.classify_many(
        batch,
        &mut || {
            let item = queue.next().filter(|_| !is_interrupted());
            Ok(item.map(|(index, text)| ClassifyItem::new(index, text.to_string())))
        },
        options,
        &|_| is_interrupted(),
        &mut |_, _| Ok(()),
        &mut |i, result| {
            if result.as_ref().is_ok_and(|r| r.stop == Stop::Cancelled) {
                interrupted = true;
                return Ok(());
            }
            finished.insert(i, result);
            while let Some(result) = finished.remove(&next_out) {
                on_result(next_out, result).map_err(|e| guardreasoner::Error::Other(format!("{e:#}")))?;
                next_out += 1;
            }
            Ok(())
        },
    ))?;
    Ok((stats, interrupted || is_interrupted()))
}

/// `--batch`: conversations decoded together. Unset, the backend's default: 8 on the GPU
/// (a matrix is read once for all of them, and a GPU has the cores to spare); on the CPU the
/// rows its block kernel shares each load of weights among (`Kernel::tile_tokens`: 8 with
/// AVX-512 VNNI, else 4; more rows add KV memory and little speed).
pub fn default_batch(device: Device) -> usize {
    match device {
        // The kernel the load will run (a bad GUARDREASONER_CPU_KERNEL is the load's error).
        Device::Cpu => guardreasoner::session::cpu_kernel_from_env()
            .ok()
            .flatten()
            .unwrap_or_else(guardreasoner::backend::cpu_blocks::kernel)
            .tile_tokens(),
        Device::Gpu | Device::Auto => 8,
    }
}

/// The model's path: `model` itself when it exists or is not a repo id (`owner/name`), else the
/// repo's snapshot folder in the Hugging Face cache (downloaded when missing, `hub::snapshot`).
pub(crate) fn resolve_model(model: &str, revision: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() || !hub::is_repo_id(model) {
        return Ok(path.to_path_buf());
    }
    hub::snapshot(model, revision, progress)
}

/// Raised by Ctrl-C; commands poll it between tokens and prefill chunks. A second Ctrl-C ends
/// the process at once (exit 130). Installed once, on first use.
pub fn interrupted() -> &'static AtomicBool {
    static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::Relaxed) {
                for path in unfinished_files().lock().map(|files| files.clone()).unwrap_or_default() {
                    let _ = std::fs::remove_file(path);
                }
                eprintln!("\ninterrupted twice: stopping now");
                std::process::exit(EXIT_INTERRUPTED.into());
            }
            eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to stop now)");
        });
        flag
    })
}

/// Files being written that a second Ctrl-C, which ends the process at once, removes first
/// (`remove_on_exit`): a command that stops on the first removes its own.
fn unfinished_files() -> &'static std::sync::Mutex<Vec<PathBuf>> {
    static FILES: OnceLock<std::sync::Mutex<Vec<PathBuf>>> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// Registers a file being written for removal by a second Ctrl-C (and installs the handler).
pub fn remove_on_exit(path: &std::path::Path) {
    interrupted();
    if let Ok(mut files) = unfinished_files().lock() {
        files.push(path.to_path_buf());
    }
}

pub fn is_interrupted() -> bool {
    interrupted().load(Ordering::Relaxed)
}
