//! `guardreasoner generate`: greedy generation from token ids, for goldens and scripts; prints
//! `{"tokens":[...]}` (the new ids) and optionally the logits that predict the first new token.

use super::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use guardreasoner::session::RunOptions;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated prompt token ids (include BOS yourself if the model wants one).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    pub tokens: Vec<u32>,
    /// Most new tokens (generation also stops at an EOS id; `--max-new` also accepted).
    #[arg(long, short = 'n', alias = "max-new", default_value_t = 32, value_parser = super::positive)]
    pub max_new_tokens: usize,
    /// Ignore EOS ids and always generate --max-new-tokens tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Write the logits that predict the first new token here (little-endian f32).
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
}

pub fn run(args: GenerateArgs) -> Result<u8> {
    let model = args.model.open()?;
    let context = args.model.context_or(Some(args.tokens.len() + args.max_new_tokens));
    let mut session = args.model.load_batched(model, 1, context)?;
    let mut options = RunOptions::new(args.max_new_tokens);
    options.ignore_eos = args.ignore_eos;
    options.keep_first_logits = args.logits_out.is_some();
    let out = pollster::block_on(session.generate(&args.tokens, &options, &|| false, &mut |_, _| Ok(())))?;
    if let (Some(path), Some(logits)) = (&args.logits_out, &out.first_logits) {
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", serde_json::json!({ "tokens": out.tokens }));
    Ok(0)
}
