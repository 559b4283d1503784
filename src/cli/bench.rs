//! `guardreasoner bench`: prefill and decode tokens/s and peak memory on a model, for comparing
//! with llama.cpp on the same machine in the same run.

use super::ModelArgs;
use anyhow::{Result, bail};
use clap::Args;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode for the decode measurement.
    #[arg(long = "gen", default_value_t = 64)]
    pub gen_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also decode this many sequences together (each from the same prompt, in its own KV
    /// cache slot of --context tokens) and report the aggregate and per-sequence tokens/s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub batch: u16,
    /// Skip the time-to-verdict measurement (a chat message of a 60-token request and a
    /// 120-token response, classified verdict-first and with reasoning).
    #[arg(long)]
    pub no_verdict: bool,
}

/// The instruction (about 180 tokens), the chat message, the reasoning and a margin.
const VERDICT_CONTEXT: usize = 200
    + guardreasoner::session::BENCH_REQUEST_TOKENS
    + guardreasoner::session::BENCH_RESPONSE_TOKENS
    + guardreasoner::session::TOKENS_TO_VERDICT
    + 32;

pub fn run(args: BenchArgs) -> Result<u8> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen must be at least 1");
    }
    let load_start = Instant::now();
    let source = args.model.open()?;
    let mut session = args.model.load_batched(source, args.batch as usize, args.model.context_or(None))?;
    let load_s = load_start.elapsed().as_secs_f64();
    // A fixed, ordinary-text prompt: token ids of real words, repeated to length.
    let tokenizer = session.tokenizer();
    let words = tokenizer
        .encode_text("The quick brown fox jumps over the lazy dog while the guard model reasons step by step. ")?;
    let mut prompt: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(words.iter().copied().take(args.prompt_tokens - prompt.len()));
    }
    if !args.no_verdict && session.context_len() < VERDICT_CONTEXT {
        bail!(
            "the time-to-verdict measurement needs a context of {VERDICT_CONTEXT} tokens: raise --context, or skip it with --no-verdict"
        );
    }
    if prompt.len() + args.gen_tokens > session.context_len() {
        bail!(
            "--prompt-tokens + --gen = {} exceeds the context {}; raise --context",
            prompt.len() + args.gen_tokens,
            session.context_len()
        );
    }
    // Decoding as classifications run (each step keeps the verdict words' logits for scores),
    // and without scores, to show what they cost.
    let speed = pollster::block_on(session.speed_test(&prompt, args.gen_tokens, true))?;
    let unscored = pollster::block_on(session.speed_test(&prompt, args.gen_tokens, false))?;
    let batched = pollster::block_on(session.batch_speed_test(&prompt, args.gen_tokens, args.batch as usize))?;
    let prefill_tps = speed.prompt_tokens as f64 / speed.prefill_s;
    let decode_tps = speed.gen_tokens as f64 / speed.decode_s;
    let unscored_tps = unscored.gen_tokens as f64 / unscored.decode_s;
    let verdict = if args.no_verdict {
        None
    } else {
        let text = session.bench_message()?;
        Some(pollster::block_on(session.verdict_speed_test(&text))?)
    };
    let peak_rss = peak_rss_bytes();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    if args.json {
        let report = serde_json::json!({
            "model": args.model.source.model,
            "backend": session.backend(),
            "quant": args.model.quant.name(),
            "load_s": load_s,
            "prompt_tokens": speed.prompt_tokens,
            "prefill_tokens_per_s": prefill_tps,
            "gen_tokens": speed.gen_tokens,
            "decode_tokens_per_s": decode_tps,
            "decode_tokens_per_s_without_scores": unscored_tps,
            "peak_host_bytes": peak_rss,
            "device_buffer_bytes": session.device_bytes(),
            "per_token": speed.per_token,
            "host_encode_us_per_token": speed.host_encode_us_per_token,
            "batch": batched.batch,
            "aggregate_decode_tokens_per_s": batched.aggregate_decode_tokens_per_s,
            "per_sequence_decode_tokens_per_s": batched.per_sequence_decode_tokens_per_s,
            "per_batch_step": batched.per_step,
            "time_to_verdict": verdict,
        });
        println!("{report}");
    } else {
        println!("backend {}", session.backend());
        println!("load {load_s:.2} s");
        println!("prefill {} tokens: {prefill_tps:.1} tokens/s", speed.prompt_tokens);
        println!("decode {} tokens: {decode_tps:.1} tokens/s with scores, {unscored_tps:.1} without", speed.gen_tokens);
        println!(
            "batch of {}, {} steps: {:.1} tokens/s together, {:.1} tokens/s per sequence",
            batched.batch,
            batched.gen_tokens,
            batched.aggregate_decode_tokens_per_s,
            batched.per_sequence_decode_tokens_per_s
        );
        if let Some(v) = &verdict {
            println!(
                "time to verdict, a chat message of {} prompt tokens ({} of them the shared instruction, computed before): verdict-first {:.2} s to the first verdict, {:.2} s to all three ({} answer tokens), reasoning {:.2} s ({} tokens, the real outputs' median before the first verdict)",
                v.prompt_tokens,
                v.reused_tokens,
                v.first_verdict_seconds,
                v.verdict_first_seconds,
                v.verdict_first_tokens,
                v.reasoning_seconds,
                v.reasoning_tokens
            );
        }
        println!("peak host memory {}", peak_rss.map(mib).unwrap_or_else(|| "unknown".into()));
        println!("device buffers {}", session.device_bytes().map(mib).unwrap_or_else(|| "none".into()));
        if let (Some(t), Some(host_us)) = (speed.per_token, speed.host_encode_us_per_token) {
            println!(
                "per decode step: {:.0} dispatches, {:.1} compute passes, {:.1} submits, {:.1} copies, {:.1} token readbacks, {:.2} blocking waits, {host_us:.0} us recording, {:.0} us in submits",
                t.dispatches, t.compute_passes, t.submits, t.copies, t.readback_copies, t.blocking_waits, t.submit_us
            );
        }
    }
    Ok(0)
}

/// The process's peak resident memory (Linux `VmHWM`), where the system says.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
