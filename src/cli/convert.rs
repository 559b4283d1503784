//! `guardreasoner convert`: any model the CLI loads (an HF folder, a Hub repo id, a GGUF file) as
//! one GGUF file of the chosen type, the file to host beside a web app (`guardreasoner::convert`).

use super::{ModelSource, is_interrupted, remove_on_exit};
use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::Value;
use clap::Args;
use guardreasoner::convert::{Target, TokenizerSource, convert};
use guardreasoner::format::FileSource;
use guardreasoner::format::gguf::GgufFile;
use guardreasoner::loader::open_path;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// The GGUF file to write (written as OUT.part, renamed when complete; nothing is left
    /// behind on an error or Ctrl-C).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Type of the matrices: q8_0 (near-lossless, 1.3 GB for GuardReasoner-1B), q4_0 (0.77 GB),
    /// q4_1 (0.84 GB), f16 (2.5 GB) or f32. Norms stay f32 as llama.cpp writes them. What q4_0
    /// or q4_1 cost in F1 is measured with `predict` + `eval` on the converted file (README).
    #[arg(long, default_value = "q8_0", value_parser = parse_target)]
    pub quant: Target,
    /// `general.name` in the file (default: the model folder's or file's name, first letter
    /// capitalised, as llama.cpp's converter names a plain folder).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_target(word: &str) -> Result<Target, String> {
    Target::parse(word).map_err(|e| e.to_string())
}

/// llama.cpp's name for a plain folder: its base name, first letter capitalised.
fn default_name(path: &Path) -> String {
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    let stem = stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let mut chars = stem.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or(stem)
}

pub fn run(args: ConvertArgs) -> Result<u8> {
    if args.out.exists() && !args.force {
        bail!("{} exists: pass --force to replace it", args.out.display());
    }
    let path = super::resolve_model(&args.source.model, &args.source.revision, !args.quiet)?;
    let mut opened = open_path(&path).with_context(|| format!("opening model {}", path.display()))?;
    let tokenizer = if path.is_dir() {
        let file = path.join("tokenizer.json");
        TokenizerSource::Json(std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?)
    } else {
        let mut source = FileSource::open(&path)?;
        let gguf = GgufFile::read(&mut source)?;
        let mut keys: Vec<(String, Value)> =
            gguf.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        TokenizerSource::Gguf(keys)
    };
    let name = args.name.clone().unwrap_or_else(|| default_name(&path));
    let part = {
        let mut name = args.out.clone().into_os_string();
        name.push(".part");
        PathBuf::from(name)
    };
    let file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    remove_on_exit(&part);
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "convert {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    let result = (|| -> Result<guardreasoner::convert::Converted> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let converted = convert(&mut opened.files, tokenizer, &name, args.quant, &mut out, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
            if is_interrupted() { Err(guardreasoner::Error::Cancelled) } else { Ok(()) }
        })?;
        let file = out.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {e}", part.display()))?;
        file.sync_all().with_context(|| format!("writing {}", part.display()))?;
        Ok(converted)
    })();
    bar.finish_and_clear();
    let converted = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            if is_interrupted() {
                eprintln!("interrupted: {} not written", args.out.display());
                return Ok(super::EXIT_INTERRUPTED);
            }
            return Err(e.context(format!("converting {} to {}", path.display(), args.quant.name())));
        }
    };
    std::fs::rename(&part, &args.out)
        .with_context(|| format!("renaming {} to {}", part.display(), args.out.display()))?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MB, {} tensors, {} parameters, matrices {})",
        args.out.display(),
        size as f64 / 1e6,
        converted.tensors,
        converted.params,
        args.quant.name()
    );
    if !converted.kept_f16.is_empty() {
        eprintln!("kept in f16 (rows not whole {} blocks): {}", args.quant.name(), converted.kept_f16.join(", "));
    }
    Ok(0)
}
