//! `guardreasoner tokenize`: the prompt ids of a text, BOS included exactly once; prints
//! `{"ids":[...]}`. Reads only the tokenizer (no weights are loaded).

use super::ModelSource;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelSource,
    /// The text to tokenize.
    #[arg(long)]
    pub text: String,
}

pub fn run(args: TokenizeArgs) -> Result<u8> {
    let ids = args.model.open()?.tokenizer.encode_prompt(&args.text)?;
    println!("{}", serde_json::json!({ "ids": ids }));
    Ok(0)
}
