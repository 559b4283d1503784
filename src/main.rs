//! `guardreasoner`: the native command line over the same core the browser runs.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guardreasoner::backend::Backend;
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::backend::gpu::{GpuBackend, GpuOptions, GpuQuant, LinearKernel};
use guardreasoner::engine::Engine;
use guardreasoner::generate::{Detokenizer, GenerateOptions, Progress, generate};
use guardreasoner::guard::{GuardEvent, ReasoningParser, guard_prompt};
use guardreasoner::loader::{OpenedModel, open_path};
use guardreasoner::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "guardreasoner", version, about = "GuardReasoner-1B, a reasoning safety classifier, on your own machine.\n\nModels: an HF-style folder (config.json, tokenizer.json, *.safetensors) or a .gguf file.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify a request (and optionally a response): streams the reasoning, then the three verdicts.
    Moderate(ModerateArgs),
    /// Greedy generation from token ids; prints {"tokens":[...]} (the new ids).
    Generate(GenerateArgs),
    /// Token ids of a text, BOS included; prints {"ids":[...]}.
    Tokenize(TokenizeArgs),
    /// Prefill and decode speed and peak memory on a model.
    Bench(BenchArgs),
    /// Write a GuardReasoner-1B-shaped GGUF with seeded random weights (for benchmarks).
    Synth(SynthArgs),
    /// Score a predictions tree (<DIR>/<Dataset>/generated_predictions.jsonl) as the paper does.
    Eval(EvalArgs),
    /// Run the model over the paper's benchmark files and write predictions in the paper's layout
    /// (the native twin of scripts/evaluate.sh, which runs the wasm module in a headless browser).
    Predict(PredictArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendKind {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Quant {
    /// Keep the file's types (HF bf16/f16 folders load as f32; on the GPU GGML quant types
    /// become the GPU's 8-bit or 4-bit blocks).
    None,
    /// 8-bit blocks (GGML Q8_0): about 1.06 bytes per weight, near-lossless.
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks (GGML Q4_0): about 0.56 bytes per weight, some accuracy cost.
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, safetensors) or .gguf file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Compute backend: `cpu` (candle) or `gpu` (WebGPU through wgpu: Vulkan natively).
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// Re-quantize float weights while loading (GGUF quantized weights always stay as they are).
    #[arg(long, value_enum, default_value = "none")]
    quant: Quant,
    /// Context size the KV cache is allocated for (prompt + new tokens); capped by the model's.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar while loading.
    #[arg(long)]
    quiet: bool,
    /// GPU matrix kernel: `auto` picks row-per-thread on adapters that run on the CPU (lavapipe)
    /// and cooperative on real GPUs.
    #[arg(long, value_enum, default_value = "auto")]
    gpu_linear: GpuLinear,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum GpuLinear {
    Auto,
    /// 32 threads per row, sums added in workgroup memory.
    Cooperative,
    /// One thread per row, no workgroup memory.
    RowPerThread,
}

#[derive(Args)]
struct ModerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The human user's request.
    #[arg(long)]
    prompt: String,
    /// The AI assistant's response (omit to classify the request alone; the model sees `None`).
    #[arg(long)]
    response: Option<String>,
    /// Print one JSON event per line instead of text.
    #[arg(long)]
    json: bool,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 2048)]
    max_new: usize,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated prompt token ids (include BOS yourself if the model wants one).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    tokens: Vec<u32>,
    /// Most new tokens (generation also stops at an EOS id).
    #[arg(long, default_value_t = 32)]
    max_new: usize,
    /// Ignore EOS ids and always generate --max-new tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Write the logits that predict the first new token here (little-endian f32).
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode for the decode measurement.
    #[arg(long = "gen", default_value_t = 64)]
    gen_tokens: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Output .gguf file.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "q4_0")]
    quant: SynthQuant,
    /// A Llama 3 tokenizer.json whose vocabulary goes into the file.
    #[arg(long, default_value = ".cache/npm/package/models/tokenizer.json")]
    tokenizer: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum SynthQuant {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args)]
struct EvalArgs {
    /// Folder with one sub-folder per dataset, each holding generated_predictions.jsonl.
    #[arg(long)]
    predictions: PathBuf,
    /// The paper's benchmark files (needed for WildGuardTest's labels).
    #[arg(long)]
    benchmark_dir: Option<PathBuf>,
    /// Print every figure as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The paper's benchmark files (0_0_SimpleSafetyTests.json, ...).
    #[arg(long)]
    benchmark_dir: PathBuf,
    /// Comma-separated dataset names as in the paper's tables (default: every benchmark file present).
    #[arg(long, value_delimiter = ',')]
    datasets: Vec<String>,
    /// Only the first N items of each dataset.
    #[arg(long)]
    limit: Option<usize>,
    /// This machine's share of a split run, I/N (0-based): contiguous slices, so the shards'
    /// files concatenate in order to the unsplit run's.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: guardreasoner::guard::Shard,
    /// Most new tokens per item.
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// Output folder: <OUT>/<Dataset>/generated_predictions.jsonl, run.json, summary.json.
    /// A rerun with the same folder resumes after the last finished item.
    #[arg(long)]
    out: PathBuf,
}

fn parse_shard(text: &str) -> std::result::Result<guardreasoner::guard::Shard, String> {
    guardreasoner::guard::Shard::parse(text)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Moderate(a) => moderate(a),
        Command::Generate(a) => generate_cmd(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Bench(a) => bench(a),
        Command::Eval(a) => eval(a),
        Command::Synth(a) => synth(a),
        Command::Predict(a) => predict::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn open(args: &ModelArgs) -> Result<OpenedModel> {
    open_path(&args.model).with_context(|| format!("opening model {}", args.model.display()))
}

/// Run `job` on an engine of the backend the user chose.
fn with_engine<R>(args: &ModelArgs, job: impl EngineJob<R>) -> Result<R> {
    if let Some(n) = args.threads {
        // SAFETY: single-threaded here, before any thread pool exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    match args.backend {
        BackendKind::Cpu => {
            let quant = match args.quant {
                Quant::None => None,
                Quant::Q8_0 => Some(candle_core::quantized::GgmlDType::Q8_0),
                Quant::Q4_0 => Some(candle_core::quantized::GgmlDType::Q4_0),
            };
            let (engine, tokenizer) = load_engine(args, CpuBackend::new(quant))?;
            job.run(engine, tokenizer)
        }
        BackendKind::Gpu => {
            let quant = match args.quant {
                Quant::None => GpuQuant::F32,
                Quant::Q8_0 => GpuQuant::Q8,
                Quant::Q4_0 => GpuQuant::Q4,
            };
            if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                // SAFETY: as above. Silences a harmless Vulkan loader warning.
                unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
            }
            let backend = pollster::block_on(GpuBackend::new(GpuOptions {
                quant,
                linear: match args.gpu_linear {
                    GpuLinear::Auto => LinearKernel::Auto,
                    GpuLinear::Cooperative => LinearKernel::Cooperative,
                    GpuLinear::RowPerThread => LinearKernel::RowPerThread,
                },
                ..GpuOptions::default()
            }))?;
            if !args.quiet {
                eprintln!("GPU: {}", backend.adapter_name());
            }
            let (engine, tokenizer) = load_engine(args, backend)?;
            job.run(engine, tokenizer)
        }
    }
}

/// A command body generic over the backend.
trait EngineJob<R> {
    fn run<B: Backend>(self, engine: Engine<B>, tokenizer: TextTokenizer) -> Result<R>;
}

fn load_engine<B: Backend>(args: &ModelArgs, backend: B) -> Result<(Engine<B>, TextTokenizer)> {
    let OpenedModel { mut files, tokenizer } = open(args)?;
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(files.weight_bytes()) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let weights = files.load(&backend, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let config = files.config.clone();
    Ok((Engine::new(backend, config, weights, args.context)?, tokenizer))
}

fn tokenize(args: TokenizeArgs) -> Result<()> {
    let OpenedModel { tokenizer, .. } = open(&args.model)?;
    let ids = tokenizer.encode_prompt(&args.text)?;
    println!("{}", serde_json::json!({ "ids": ids }));
    Ok(())
}

fn generate_cmd(args: GenerateArgs) -> Result<()> {
    if args.tokens.is_empty() {
        bail!("--tokens is empty: give at least one token id");
    }
    with_engine(&args.model, GenerateJob(&args))
}

struct GenerateJob<'a>(&'a GenerateArgs);

impl EngineJob<()> for GenerateJob<'_> {
    fn run<B: Backend>(self, mut engine: Engine<B>, _: TextTokenizer) -> Result<()> {
        let args = self.0;
        let opts = GenerateOptions {
            max_new_tokens: args.max_new,
            stop_ids: if args.ignore_eos { vec![] } else { engine.config.eos_token_ids.clone() },
            keep_first_logits: args.logits_out.is_some(),
        };
        let out = pollster::block_on(generate(&mut engine, &args.tokens, &opts, &|| false, &mut |_| Ok(())))?;
        if let (Some(path), Some(logits)) = (&args.logits_out, &out.first_logits) {
            let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{}", serde_json::json!({ "tokens": out.tokens }));
        Ok(())
    }
}

fn moderate(args: ModerateArgs) -> Result<()> {
    with_engine(&args.model, ModerateJob(&args))
}

struct ModerateJob<'a>(&'a ModerateArgs);

impl EngineJob<()> for ModerateJob<'_> {
    fn run<B: Backend>(self, mut engine: Engine<B>, tokenizer: TextTokenizer) -> Result<()> {
        let args = self.0;
        let text = guard_prompt(&args.prompt, args.response.as_deref());
        let ids = tokenizer.encode_prompt(&text)?;
        let cancelled = Arc::new(AtomicBool::new(false));
        {
            let cancelled = cancelled.clone();
            // Ctrl-C stops generation after the current token; the verdicts so far are printed.
            let _ = ctrlc::set_handler(move || cancelled.store(true, Ordering::Relaxed));
        }
        let opts = GenerateOptions { max_new_tokens: args.max_new, stop_ids: engine.config.eos_token_ids.clone(), keep_first_logits: false };
        let mut detok = Detokenizer::new();
        let mut parser = ReasoningParser::new();
        let mut out = std::io::stdout().lock();
        let start = Instant::now();
        let mut first_token: Option<f64> = None;
        let json = args.json;
        let emit = |delta: &str, parser: &mut ReasoningParser, out: &mut std::io::StdoutLock| -> guardreasoner::Result<()> {
            if delta.is_empty() {
                return Ok(());
            }
            let mut lines = String::new();
            if json {
                lines.push_str(&format!("{}\n", serde_json::json!({"type": "token", "text": delta})));
                for event in parser.push(delta) {
                    lines.push_str(&format!("{}\n", serde_json::to_string(&event).unwrap_or_default()));
                }
            } else {
                parser.push(delta);
                lines.push_str(delta);
            }
            out.write_all(lines.as_bytes()).and_then(|_| out.flush()).map_err(|e| guardreasoner::Error::io("writing output", e))
        };
        let result = pollster::block_on(generate(&mut engine, &ids, &opts, &|| cancelled.load(Ordering::Relaxed), &mut |p| match p {
            Progress::PromptDone { .. } => Ok(()),
            Progress::Token(id) => {
                first_token.get_or_insert(start.elapsed().as_secs_f64());
                let delta = detok.push(&tokenizer, id)?;
                emit(&delta, &mut parser, &mut out)
            }
        }));
        let (new_tokens, stop) = match result {
            Ok(g) => (g.tokens.len(), serde_json::to_value(g.stop)?),
            Err(guardreasoner::Error::Cancelled) => (0, serde_json::json!("cancelled")),
            Err(e) => return Err(e.into()),
        };
        let tail = detok.finish(&tokenizer)?;
        emit(&tail, &mut parser, &mut out)?;
        let final_events: Vec<GuardEvent> = parser.finish().into_iter().filter(|e| !matches!(e, GuardEvent::Done)).collect();
        let total = start.elapsed().as_secs_f64();
        let decode_tps = if new_tokens > 1 { (new_tokens - 1) as f64 / (total - first_token.unwrap_or(total)).max(1e-9) } else { 0.0 };
        let verdicts = parser.result();
        if json {
            for event in final_events {
                println!("{}", serde_json::to_string(&event)?);
            }
            println!(
                "{}",
                serde_json::json!({
                    "type": "done",
                    "result": verdicts,
                    "prompt_tokens": ids.len(),
                    "new_tokens": new_tokens,
                    "stop": stop,
                    "backend": engine.backend.describe(),
                    "time_to_first_token_s": first_token,
                    "total_s": total,
                    "decode_tokens_per_s": decode_tps,
                })
            );
        } else {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
            println!("\n\n== verdicts");
            println!("Request:    {}", show(&verdicts.request));
            println!("Completion: {}", show(&verdicts.completion));
            println!("Response:   {}", show(&verdicts.response));
            println!("[{} prompt tokens, {new_tokens} new tokens, {decode_tps:.1} tokens/s, {total:.1} s, stop: {stop}]", ids.len());
        }
        Ok(())
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen must be at least 1");
    }
    with_engine(&args.model, BenchJob(&args, Instant::now()))
}

struct BenchJob<'a>(&'a BenchArgs, Instant);

impl EngineJob<()> for BenchJob<'_> {
    fn run<B: Backend>(self, mut engine: Engine<B>, tokenizer: TextTokenizer) -> Result<()> {
        let (args, load_start) = (self.0, self.1);
        let load_s = load_start.elapsed().as_secs_f64();
        // A fixed, ordinary-text prompt: token ids of real words, repeated to length.
        let words = tokenizer.encode_text("The quick brown fox jumps over the lazy dog while the guard model reasons step by step. ")?;
        let mut prompt: Vec<u32> = tokenizer.bos_id().into_iter().collect();
        while prompt.len() < args.prompt_tokens {
            prompt.extend(words.iter().copied().take(args.prompt_tokens - prompt.len()));
        }
        if prompt.len() + args.gen_tokens > engine.context_len() {
            bail!("--prompt-tokens + --gen = {} exceeds the context {}; raise --context", prompt.len() + args.gen_tokens, engine.context_len());
        }
        // Warm-up (pipeline compilation, first allocations), then the measured runs.
        let (logits, _) = engine.prefill(&prompt[..prompt.len().min(8)])?;
        pollster::block_on(engine.backend.argmax(&logits))?;
        engine.reset();
        let t0 = Instant::now();
        let (logits, _) = engine.prefill(&prompt)?;
        let mut next = pollster::block_on(engine.backend.argmax(&logits))?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..args.gen_tokens {
            let logits = engine.step(next)?;
            next = pollster::block_on(engine.backend.argmax(&logits))?;
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let peak_rss = peak_rss_bytes();
        let report = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "backend": engine.backend.describe(),
            "quant": format!("{:?}", args.model.quant).to_lowercase(),
            "load_s": load_s,
            "prompt_tokens": prompt.len(),
            "prefill_tokens_per_s": prompt.len() as f64 / prefill_s,
            "gen_tokens": args.gen_tokens,
            "decode_tokens_per_s": args.gen_tokens as f64 / decode_s,
            "peak_host_bytes": peak_rss,
            "device_buffer_bytes": engine.backend.device_bytes(),
        });
        if args.json {
            println!("{report}");
        } else {
            println!(
                "backend {}\nload {:.2} s\nprefill {} tokens: {:.1} tokens/s\ndecode {} tokens: {:.1} tokens/s\npeak host memory {}\ndevice buffers {}",
                engine.backend.describe(),
                load_s,
                prompt.len(),
                prompt.len() as f64 / prefill_s,
                args.gen_tokens,
                args.gen_tokens as f64 / decode_s,
                peak_rss.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "unknown".into()),
                engine.backend.device_bytes().map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "none".into())
            );
        }
        Ok(())
    }
}

fn synth(args: SynthArgs) -> Result<()> {
    let tokenizer = std::fs::read(&args.tokenizer).with_context(|| format!("reading {} (run scripts/fetch-test-assets.sh, or pass --tokenizer)", args.tokenizer.display()))?;
    let quant = match args.quant {
        SynthQuant::Q4_0 => candle_core::quantized::GgmlDType::Q4_0,
        SynthQuant::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
    };
    let part = args.out.with_extension("gguf.part");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("synth {bar:30} {pos}/{len} tensors eta {eta}").expect("static template"));
    guardreasoner::synth::write_synthetic_gguf(&mut file, quant, &tokenizer, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    file.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {e}", part.display()))?.sync_all()?;
    std::fs::rename(&part, &args.out)?;
    bar.finish_and_clear();
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let report = guardreasoner::guard::evaluate_dir(&args.predictions, args.benchmark_dir.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_tables());
    }
    Ok(())
}

#[path = "cli/predict.rs"]
mod predict;

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
