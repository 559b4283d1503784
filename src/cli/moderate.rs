//! `guardreasoner moderate`: classify one conversation, streaming the reasoning as it is written,
//! then the three verdicts (text), or one JSON event a line ending with `done` (`--json`).

use super::{EXIT_INTERRUPTED, EXIT_NO_VERDICT, ModelArgs, is_interrupted};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use guardreasoner::session::{ClassifyEvent, RunOptions, Stop};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ModerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The human user's request.
    #[arg(long, short = 'p', required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the request from a file (`-`: standard input); for long or multi-line text.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// The AI assistant's response (omit to classify the request alone; the model sees `None`).
    #[arg(long, short = 'r', conflicts_with = "response_file")]
    pub response: Option<String>,
    /// Read the response from a file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub response_file: Option<PathBuf>,
    /// Print one JSON event per line (token, task_started, step_started, step_text,
    /// step_finished, conclusion, verdict, done) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Most new tokens to generate (`--max-new` also accepted).
    #[arg(long, short = 'n', alias = "max-new", default_value_t = 2048, value_parser = super::positive)]
    pub max_new_tokens: usize,
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
    if args.prompt_file.as_deref() == Some(Path::new("-")) && args.response_file.as_deref() == Some(Path::new("-")) {
        bail!("--prompt-file and --response-file cannot both read standard input (-)");
    }
    let prompt = text_arg("prompt", args.prompt.clone(), args.prompt_file.as_deref())?.unwrap_or_default();
    let response = text_arg("response", args.response.clone(), args.response_file.as_deref())?;
    // The core's rule for an empty text, checked before the model loads.
    guardreasoner::guard::checked_guard_prompt(&prompt, response.as_deref()).map_err(|e| anyhow!(e))?;
    let mut session = args.model.load()?;
    super::interrupted(); // Ctrl-C from here on stops the run after the current token
    let mut out = std::io::stdout().lock();
    let json = args.json;
    let result = pollster::block_on(session.moderate(
        &prompt,
        response.as_deref(),
        &RunOptions::new(args.max_new_tokens),
        &is_interrupted,
        &mut |event| {
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
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        writeln!(out, "\n\n== verdicts")?;
        match &result.problem {
            Some(problem) => writeln!(out, "{problem}")?,
            None => {
                writeln!(out, "Request:    {}", show(&result.request))?;
                writeln!(out, "Completion: {}", show(&result.completion))?;
                writeln!(out, "Response:   {}", show(&result.response))?;
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
