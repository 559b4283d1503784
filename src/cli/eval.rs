//! `guardreasoner eval`: score a predictions tree (`DIR/<Dataset>/generated_predictions.jsonl`)
//! exactly as the paper's evaluator does; tables, or every figure as JSON.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// Folder with one sub-folder per dataset, each holding generated_predictions.jsonl.
    #[arg(long)]
    pub predictions: PathBuf,
    /// The paper's benchmark files (needed for WildGuardTest's labels).
    #[arg(long)]
    pub benchmark_dir: Option<PathBuf>,
    /// Print every figure as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the figures as a page, each beside the paper's (e.g. report.html; readable
    /// offline).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<u8> {
    let report = guardreasoner::guard::evaluate_dir(&args.predictions, args.benchmark_dir.as_deref())?;
    if let Some(path) = &args.report {
        let page = guardreasoner::guard::report_html(&serde_json::json!({ "scores": report }));
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_tables());
    }
    Ok(0)
}
