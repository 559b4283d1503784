//! `guardreasoner`: the native command line over the same core the browser runs.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::engine::Engine;
use guardreasoner::generate::{generate, Detokenizer, GenerateOptions, Progress};
use guardreasoner::guard::prompt::guard_prompt;
use guardreasoner::loader::{open_path, OpenedModel};
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
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendKind {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Quant {
    /// Keep the file's types (HF bf16/f16 folders load as f32).
    None,
    /// 8-bit blocks (GGML Q8_0): about 1.06 bytes per weight, near-lossless.
    Q8_0,
    /// 4-bit blocks (GGML Q4_0): about 0.56 bytes per weight, some accuracy cost.
    Q4_0,
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, safetensors) or .gguf file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Compute backend. `gpu` is not built yet.
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
    #[arg(long, default_value_t = 64)]
    gen: usize,
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Moderate(a) => moderate(a),
        Command::Generate(a) => generate_cmd(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Bench(a) => bench(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn open(args: &ModelArgs) -> Result<OpenedModel> {
    open_path(&args.model).with_context(|| format!("opening model {}", args.model.display()))
}

fn load_engine(args: &ModelArgs) -> Result<(Engine<CpuBackend>, TextTokenizer)> {
    if args.backend == BackendKind::Gpu {
        bail!("the GPU backend is not built yet; use --backend cpu");
    }
    if let Some(n) = args.threads {
        // Read by candle's thread pools on first use, which is after this point.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let OpenedModel { mut files, tokenizer } = open(args)?;
    let quant = match args.quant {
        Quant::None => None,
        Quant::Q8_0 => Some(candle_core::quantized::GgmlDType::Q8_0),
        Quant::Q4_0 => Some(candle_core::quantized::GgmlDType::Q4_0),
    };
    let backend = CpuBackend::new(quant);
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
    let (mut engine, _) = load_engine(&args.model)?;
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

fn moderate(args: ModerateArgs) -> Result<()> {
    let (mut engine, tokenizer) = load_engine(&args.model)?;
    let text = guard_prompt(&args.prompt, args.response.as_deref());
    let ids = tokenizer.encode_prompt(&text)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let opts = GenerateOptions { max_new_tokens: args.max_new, stop_ids: engine.config.eos_token_ids.clone(), keep_first_logits: false };
    let mut detok = Detokenizer::new();
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token: Option<f64> = None;
    let mut full = String::new();
    let mut emit = |delta: &str, stdout: &mut std::io::StdoutLock| -> guardreasoner::Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        full.push_str(delta);
        let line = if args.json { format!("{}\n", serde_json::json!({"type": "token", "text": delta})) } else { delta.to_string() };
        stdout.write_all(line.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| guardreasoner::Error::io("writing output", e))
    };
    let gen = pollster::block_on(generate(&mut engine, &ids, &opts, &|| cancelled.load(Ordering::Relaxed), &mut |p| match p {
        Progress::PromptDone { .. } => Ok(()),
        Progress::Token(id) => {
            first_token.get_or_insert(start.elapsed().as_secs_f64());
            let delta = detok.push(&tokenizer, id)?;
            emit(&delta, &mut stdout)
        }
    }))?;
    let tail = detok.finish(&tokenizer)?;
    emit(&tail, &mut stdout)?;
    let total = start.elapsed().as_secs_f64();
    let decode_tps = if gen.tokens.len() > 1 { (gen.tokens.len() - 1) as f64 / (total - first_token.unwrap_or(total)).max(1e-9) } else { 0.0 };
    let summary = serde_json::json!({
        "type": "done",
        "prompt_tokens": gen.prompt_tokens,
        "new_tokens": gen.tokens.len(),
        "stop": gen.stop,
        "time_to_first_token_s": first_token,
        "total_s": total,
        "decode_tokens_per_s": decode_tps,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("\n\n[{} prompt tokens, {} new tokens, {:.1} tokens/s, {:.1} s]", gen.prompt_tokens, gen.tokens.len(), decode_tps, total);
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen == 0 {
        bail!("--prompt-tokens and --gen must be at least 1");
    }
    let load_start = Instant::now();
    let (mut engine, tokenizer) = load_engine(&args.model)?;
    let load_s = load_start.elapsed().as_secs_f64();
    // A fixed, ordinary-text prompt: token ids of real words, repeated to length.
    let words = tokenizer.encode_text("The quick brown fox jumps over the lazy dog while the guard model reasons step by step. ")?;
    let mut prompt: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(words.iter().copied().take(args.prompt_tokens - prompt.len()));
    }
    if prompt.len() + args.gen > engine.context_len() {
        bail!("--prompt-tokens + --gen = {} exceeds the context {}; raise --context", prompt.len() + args.gen, engine.context_len());
    }
    let t0 = Instant::now();
    let (logits, _) = engine.prefill(&prompt)?;
    let mut next = pollster::block_on(guardreasoner::backend::Backend::argmax(&engine.backend, &logits))?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..args.gen {
        let logits = engine.step(next)?;
        next = pollster::block_on(guardreasoner::backend::Backend::argmax(&engine.backend, &logits))?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let peak_rss = peak_rss_bytes();
    let report = serde_json::json!({
        "model": args.model.model.display().to_string(),
        "backend": guardreasoner::backend::Backend::describe(&engine.backend),
        "quant": format!("{:?}", args.model.quant).to_lowercase(),
        "load_s": load_s,
        "prompt_tokens": prompt.len(),
        "prefill_tokens_per_s": prompt.len() as f64 / prefill_s,
        "gen_tokens": args.gen,
        "decode_tokens_per_s": args.gen as f64 / decode_s,
        "peak_host_bytes": peak_rss,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "backend {}\nload {:.2} s\nprefill {} tokens: {:.1} tokens/s\ndecode {} tokens: {:.1} tokens/s\npeak host memory {}",
            report["backend"].as_str().unwrap_or(""),
            load_s,
            prompt.len(),
            prompt.len() as f64 / prefill_s,
            args.gen,
            args.gen as f64 / decode_s,
            peak_rss.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "unknown".into())
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), if the OS tells.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
