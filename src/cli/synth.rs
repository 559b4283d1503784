//! `guardreasoner synth`: a GuardReasoner-1B-shaped GGUF with seeded random weights and the real
//! Llama 3 tokenizer, for speed and memory benchmarks (llama.cpp loads it too), or the bf16
//! Hugging Face folder the real checkpoint is, for loading tests.

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args)]
pub struct SynthArgs {
    /// Output: a .gguf file (written as FILE.part, renamed when complete), or with `--quant bf16`
    /// a folder (config.json, generation_config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight type of the matrices: q4_0, q8_0 (GGUF), or bf16 (a Hugging Face folder of 2.47 GB,
    /// as the real checkpoint).
    #[arg(long, value_enum, default_value = "q4_0")]
    pub quant: SynthQuant,
    /// A Llama 3 tokenizer.json whose vocabulary goes into the file.
    #[arg(long, default_value = ".cache/npm/package/models/tokenizer.json")]
    pub tokenizer: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SynthQuant {
    #[value(name = "q4_0", alias = "q4")]
    Q4_0,
    #[value(name = "q8_0", alias = "q8")]
    Q8_0,
    Bf16,
}

pub fn run(args: SynthArgs) -> Result<u8> {
    let tokenizer = std::fs::read(&args.tokenizer).with_context(|| {
        format!("reading {} (run scripts/fetch-test-assets.sh, or pass --tokenizer)", args.tokenizer.display())
    })?;
    let quant = match args.quant {
        SynthQuant::Q4_0 => GgmlDType::Q4_0,
        SynthQuant::Q8_0 => GgmlDType::Q8_0,
        SynthQuant::Bf16 => {
            let bar = indicatif::ProgressBar::new_spinner().with_message("writing a 2.47 GB bf16 folder");
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            guardreasoner::synth::write_synthetic_hf_folder(&args.out, &tokenizer, &mut |_, _| {})?;
            bar.finish_and_clear();
            eprintln!("wrote {}", args.out.display());
            return Ok(0);
        }
    };
    let part = args.out.with_extension("gguf.part");
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("synth {bar:30} {pos}/{len} tensors eta {eta}")
            .expect("static template"),
    );
    guardreasoner::synth::write_synthetic_gguf(&mut file, quant, &tokenizer, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    file.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {e}", part.display()))?.sync_all()?;
    std::fs::rename(&part, &args.out)?;
    bar.finish_and_clear();
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}
