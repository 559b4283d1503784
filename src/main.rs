//! `guardreasoner`: the native command line over the same core the browser runs. Parses the
//! command, runs it (each lives in `src/cli/`), and turns the outcome into an exit code.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "guardreasoner",
    version,
    about = "GuardReasoner-1B, a reasoning safety classifier, on your own machine.",
    long_about = "GuardReasoner-1B, a reasoning safety classifier, on your own machine.\n\nModels: an HF-style folder (config.json, tokenizer.json, *.safetensors), a .gguf file, or an owner/name repo id already in the local Hugging Face cache.\n\nExit codes: 0 done, 1 error, 2 bad usage, 3 a classification found no verdict, 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify a request (and optionally a response): streams the reasoning, then the three verdicts.
    Moderate(cli::moderate::ModerateArgs),
    /// Greedy generation from token ids; prints {"tokens":[...]} (the new ids).
    Generate(cli::generate::GenerateArgs),
    /// Token ids of a text, BOS included; prints {"ids":[...]}.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Prefill and decode speed and peak memory on a model.
    Bench(cli::bench::BenchArgs),
    /// Write a model (HF folder, Hub repo id or GGUF) as one GGUF file: q8_0, q4_0, q4_1, f16 or f32.
    Convert(cli::convert::ConvertArgs),
    /// Write a GuardReasoner-1B-shaped GGUF with seeded random weights (for benchmarks).
    Synth(cli::synth::SynthArgs),
    /// Score a predictions tree (<DIR>/<Dataset>/generated_predictions.jsonl) as the paper does.
    Eval(cli::eval::EvalArgs),
    /// Run the model over the paper's benchmark files and write predictions in the paper's layout
    /// (the native twin of evaluator/evaluate.sh, which runs the wasm module in a headless browser).
    Predict(cli::predict::PredictArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Moderate(args) => cli::moderate::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Tokenize(args) => cli::tokenize::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Convert(args) => cli::convert::run(args),
        Command::Synth(args) => cli::synth::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Predict(args) => cli::predict::run(args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
