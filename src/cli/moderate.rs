//! `guardreasoner moderate`: classify one conversation, streaming the reasoning as it is written,
//! then the three verdicts (text), or one JSON event a line ending with `done` (`--json`); or a
//! file of conversations (`--input`), decoded together, one JSON result a line in input order.

use super::{EXIT_INTERRUPTED, EXIT_NO_VERDICT, ModelArgs, default_batch, is_interrupted};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use guardreasoner::session::{Classification, ClassifyEvent, RunOptions, Stop};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ModerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The human user's request.
    #[arg(long, short = 'p', required_unless_present_any = ["prompt_file", "input"], conflicts_with_all = ["prompt_file", "input"])]
    pub prompt: Option<String>,
    /// Read the request from a file (`-`: standard input); for long or multi-line text.
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub prompt_file: Option<PathBuf>,
    /// The AI assistant's response (omit to classify the request alone; the model sees `None`).
    #[arg(long, short = 'r', conflicts_with_all = ["response_file", "input"])]
    pub response: Option<String>,
    /// Read the response from a file (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub response_file: Option<PathBuf>,
    /// A file of conversations (`-`: standard input), one JSON object a line: `{"prompt": ...,
    /// "response": ...}` (`response` may be absent or null; any `id` is copied to the result).
    /// Prints one JSON result a line, in input order, with `line` (the input's line number):
    /// the verdicts, the reasoning and the counts, or `error`. Every line is checked before the
    /// model loads. Progress goes to stderr.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// With --input: conversations decoded together (continuous batching). Default 8 on the
    /// GPU; on the CPU 8 with AVX-512 VNNI, else 4 (the rows its kernel shares each load of
    /// weights among); any batch gives the same results.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=128), requires = "input")]
    pub batch: Option<u16>,
    /// Print one JSON event per line (token, task_started, step_started, step_text,
    /// step_finished, conclusion, verdict, done) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Most new tokens to generate (`--max-new` also accepted).
    #[arg(long, short = 'n', alias = "max-new", default_value_t = guardreasoner::session::DEFAULT_MAX_NEW_TOKENS, value_parser = super::positive)]
    pub max_new_tokens: usize,
    /// Turn scores into verdicts: a verdict is harmful (refusal) when its score, the model's
    /// probability of harmful (refusal), is at least this. One number for all three verdicts, or
    /// some by name: `request=0.3,response=0.7`. Without it the verdicts are the model's own.
    #[arg(long, value_name = "P", value_parser = guardreasoner::guard::Thresholds::parse)]
    pub threshold: Option<guardreasoner::guard::Thresholds>,
    /// Verdict-first mode: the verdicts at once, without reasoning (the answer section's
    /// opening is given after the prompt; about a dozen tokens). The model was trained to reason
    /// first, so measure this mode on the paper's benchmarks (`predict --verdict-first`) before
    /// trusting it.
    #[arg(long)]
    pub verdict_first: bool,
}

impl ModerateArgs {
    fn run_options(&self) -> RunOptions {
        let mut options = RunOptions::new(self.max_new_tokens);
        options.thresholds = self.threshold.unwrap_or_default();
        options.verdict_first = self.verdict_first;
        options
    }
}

/// A verdict line's value: the verdict and its score, `harmful (P(harmful) 0.97)`.
fn shown(verdict: &Option<String>, score: Option<f64>, positive: &str) -> String {
    match (verdict, score) {
        (Some(v), Some(p)) => format!("{v} (P({positive}) {p:.3})"),
        (Some(v), None) => v.clone(),
        (None, _) => "none".into(),
    }
}

/// The text of `--NAME` or `--NAME-file` (`-` reads standard input, once).
fn text_arg(name: &str, inline: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    let text = match (inline, file) {
        (Some(text), _) => text,
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("--{name}-file -: reading standard input"))?;
            text
        }
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| anyhow!("--{name}-file {}: {e}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    // A file or a pipe ends its last line with a newline that `-p "$(cat FILE)"` would drop: the
    // same text gives the same prompt either way.
    let text = match (file.is_some(), text.strip_suffix('\n')) {
        (true, Some(body)) => body.strip_suffix('\r').unwrap_or(body).to_string(),
        _ => text,
    };
    Ok(Some(text))
}

pub fn run(args: ModerateArgs) -> Result<u8> {
    if let Some(input) = args.input.clone() {
        return run_file(&args, &input);
    }
    if args.prompt_file.as_deref() == Some(Path::new("-")) && args.response_file.as_deref() == Some(Path::new("-")) {
        bail!("--prompt-file and --response-file cannot both read standard input (-)");
    }
    let prompt = text_arg("prompt", args.prompt.clone(), args.prompt_file.as_deref())?.unwrap_or_default();
    let response = text_arg("response", args.response.clone(), args.response_file.as_deref())?;
    // The core's rule for an empty text, checked before the model loads.
    let text = guardreasoner::guard::checked_guard_prompt(&prompt, response.as_deref()).map_err(|e| anyhow!(e))?;
    let model = args.model.open()?;
    // The KV cache this conversation needs: its prompt and the new tokens, no more.
    let need = model.tokenizer.encode_prompt(&text)?.len() + args.max_new_tokens;
    let mut session = args.model.load_batched(model, 1, args.model.context_or(Some(need)))?;
    super::interrupted(); // Ctrl-C from here on stops the run after the current token
    let mut out = std::io::stdout().lock();
    let json = args.json;
    // Between the load and the first token (the prompt's prefill): a status line on stderr,
    // cleared when the answer starts (drawn only on a terminal).
    let status =
        if args.model.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    status.set_message("reading the conversation…");
    status.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = pollster::block_on(session.moderate(
        &prompt,
        response.as_deref(),
        &args.run_options(),
        &is_interrupted,
        &mut |event| {
            if !status.is_finished() {
                status.finish_and_clear();
            }
            let text = match (json, event) {
                (true, event) => format!("{}\n", event.to_json()),
                (false, ClassifyEvent::Token(delta)) => delta.to_string(),
                (false, ClassifyEvent::Guard(_)) => return Ok(()),
            };
            out.write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| guardreasoner::Error::io("writing output", e))
        },
    ))?;
    status.finish_and_clear();
    if json {
        let mut done = serde_json::to_value(&result)?;
        let legacy = serde_json::json!({
            "type": "done",
            "backend": session.backend(),
            // The names of the first release, kept for scripts that read them.
            "result": {"tasks": result.tasks, "request": result.request, "completion": result.completion, "response": result.response},
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens,
            "time_to_first_token_s": result.timings.time_to_first_token_seconds,
            "total_s": result.timings.total_seconds,
            "decode_tokens_per_s": result.timings.tokens_per_second.unwrap_or(0.0),
        });
        if let (Some(done), serde_json::Value::Object(extra)) = (done.as_object_mut(), legacy) {
            done.extend(extra);
        }
        writeln!(out, "{done}")?;
    } else {
        writeln!(out, "\n\n== verdicts")?;
        let scores = &result.scores;
        match &result.problem {
            Some(problem) => writeln!(out, "{problem}")?,
            None => {
                writeln!(out, "Request:    {}", shown(&result.request, scores.request, "harmful"))?;
                writeln!(out, "Completion: {}", shown(&result.completion, scores.completion, "refusal"))?;
                writeln!(out, "Response:   {}", shown(&result.response, scores.response, "harmful"))?;
            }
        }
        let t = &result.timings;
        writeln!(
            out,
            "[{} prompt tokens, {} new tokens, {:.1} tokens/s, {:.1} s, stop: \"{}\"]",
            result.prompt_tokens,
            result.new_tokens,
            t.tokens_per_second.unwrap_or(0.0),
            t.total_seconds,
            result.stop.name()
        )?;
    }
    Ok(if result.stop == Stop::Cancelled {
        EXIT_INTERRUPTED
    } else if !result.verdict_found {
        EXIT_NO_VERDICT
    } else {
        0
    })
}

/// One conversation of an `--input` file.
struct InputLine {
    /// 1-based line number in the file.
    line: usize,
    id: Option<serde_json::Value>,
    /// The GuardReasoner prompt built from it.
    text: String,
}

/// The conversations of an `--input` text, each checked (JSON, fields, empty texts) with its line
/// number named; blank lines are skipped.
fn parse_input(name: &str, text: &str) -> Result<Vec<InputLine>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conversation {
        prompt: String,
        #[serde(default)]
        response: Option<String>,
        #[serde(default)]
        id: Option<serde_json::Value>,
    }
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let c: Conversation = serde_json::from_str(raw).map_err(|e| {
            anyhow!("{name}:{line}: {e} (expected {{\"prompt\": \"...\", \"response\": \"...\"}}, response optional)")
        })?;
        let text = guardreasoner::guard::checked_guard_prompt(&c.prompt, c.response.as_deref())
            .map_err(|e| anyhow!("{name}:{line}: {e}"))?;
        lines.push(InputLine { line, id: c.id, text });
    }
    if lines.is_empty() {
        bail!("{name}: no conversations (one JSON object a line: {{\"prompt\": \"...\", \"response\": \"...\"}})");
    }
    Ok(lines)
}

/// The result line of one conversation: `line`, `id` when given, then the classification or
/// `error`.
fn result_line(input: &InputLine, result: &guardreasoner::Result<Classification>) -> Result<String> {
    let mut object = serde_json::Map::new();
    object.insert("line".into(), input.line.into());
    if let Some(id) = &input.id {
        object.insert("id".into(), id.clone());
    }
    match result {
        Ok(c) => {
            if let serde_json::Value::Object(fields) = serde_json::to_value(c)? {
                object.extend(fields);
            }
        }
        Err(e) => {
            object.insert("error".into(), e.to_string().into());
        }
    }
    Ok(serde_json::Value::Object(object).to_string())
}

/// `moderate --input FILE`: every conversation of the file, decoded together, results in order.
fn run_file(args: &ModerateArgs, input: &Path) -> Result<u8> {
    let (name, text) = if input == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("--input -: reading standard input")?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(input).map_err(|e| anyhow!("--input {}: {e}", input.display()))?;
        (input.display().to_string(), text)
    };
    let lines = parse_input(&name, &text)?;
    let batch = args.batch.map_or_else(|| default_batch(args.model.backend), usize::from);
    let model = args.model.open()?;
    // Every conversation's KV cache is as long as the longest one needs (prompt + new tokens),
    // but with several decoded together not past DEFAULT_CONTEXT unless asked (--context): one
    // very long line must not multiply every slot's memory; it gets its own error line instead.
    let mut need = 0;
    for line in &lines {
        need = need.max(model.tokenizer.encode_prompt(&line.text)?.len() + args.max_new_tokens);
    }
    let batch = batch.min(lines.len());
    let need = if batch > 1 { need.min(super::DEFAULT_CONTEXT) } else { need };
    let context = args.model.context_or(Some(need));
    let mut session = args.model.load_batched(model, batch, context)?;
    super::interrupted(); // Ctrl-C from here on: no new conversation starts; finished ones are printed
    let bar = if args.model.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(lines.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} conversations {msg} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let (mut written, mut tokens, mut no_verdict, mut errors) = (0usize, 0usize, 0usize, 0usize);
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let batch = session.batch();
    let (_, interrupted) = super::classify_in_order(&mut session, &texts, &args.run_options(), &mut |i, result| {
        writeln!(out, "{}", result_line(&lines[i], &result)?)?;
        out.flush()?;
        match &result {
            Ok(c) => {
                tokens += c.new_tokens;
                no_verdict += usize::from(!c.verdict_found);
            }
            Err(_) => errors += 1,
        }
        written += 1;
        bar.set_message(format!("{:.1} tokens/s", tokens as f64 / started.elapsed().as_secs_f64().max(1e-9)));
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if interrupted {
        eprintln!("interrupted: {written} of {} conversations printed", lines.len());
        return Ok(EXIT_INTERRUPTED);
    }
    if !args.model.quiet {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "{} conversations, {tokens} tokens in {seconds:.1} s ({:.1} tokens/s, up to {batch} at once); {no_verdict} without a verdict, {errors} failed",
            lines.len(),
            tokens as f64 / seconds.max(1e-9)
        );
    }
    Ok(if errors > 0 {
        1
    } else if no_verdict > 0 {
        EXIT_NO_VERDICT
    } else {
        0
    })
}
