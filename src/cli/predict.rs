//! `guardreasoner predict`: the paper's benchmarks through the native engine, written in the
//! paper's layout item by item (each line flushed and synced, so a killed run loses nothing
//! finished and a rerun resumes), then scored. The browser evaluator (evaluator/evaluate.mjs) does
//! the same through the wasm module; both select items, build prompts, write lines and find the
//! resume point with the same code (`guardreasoner::guard::run`).

use super::{EXIT_INTERRUPTED, ModelArgs, default_batch};
use anyhow::{Context, Result, bail};
use clap::Args;
use guardreasoner::guard::{
    BenchmarkItem, DATASETS, DatasetPredictions, DatasetSpec, EvalReport, GroundTruthSource, MANIFEST_FILE,
    PREDICTIONS_FILE, PlannedItem, REPORT_FILE, RunManifest, RunSummary, SCORES_FILE, SUMMARY_FILE, Shard, evaluate,
    kept_scores, parse_benchmark_json, parse_predictions_jsonl, parse_scores_jsonl, plan_items, prediction_line,
    report_html, resume_point, scores_line,
};
use guardreasoner::session::{RunOptions, Session};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The paper's benchmark files (0_0_SimpleSafetyTests.json, ...).
    #[arg(long)]
    pub benchmark_dir: PathBuf,
    /// Comma-separated dataset names as in the paper's tables (default: every benchmark file present).
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Only the first N items of each dataset.
    #[arg(long, value_parser = super::positive)]
    pub limit: Option<usize>,
    /// This machine's share of a split run, I/N (0-based): contiguous slices, so the shards'
    /// files concatenate in order to the unsplit run's.
    #[arg(long, default_value = "0/1", value_parser = Shard::parse)]
    pub shard: Shard,
    /// Most new tokens per item (`--max-new` also accepted).
    #[arg(long, short = 'n', alias = "max-new", default_value_t = guardreasoner::session::DEFAULT_MAX_NEW_TOKENS, value_parser = super::positive)]
    pub max_new_tokens: usize,
    /// Output folder: <OUT>/<Dataset>/generated_predictions.jsonl, run.json, summary.json.
    /// A rerun with the same folder resumes after the last finished item.
    #[arg(long)]
    pub out: PathBuf,
    /// Items decoded together (continuous batching: a finished item's place takes the next at
    /// once). Default 8 on the GPU; on the CPU 8 with AVX-512 VNNI, else 4 (the rows its
    /// kernel shares each load of weights among: more add KV memory and little speed). Any batch
    /// writes the same predictions, byte for byte; each item needs its own KV cache of
    /// --context tokens.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub batch: Option<u16>,
    /// Verdict-first mode: give the model the answer section's opening right after the prompt,
    /// so each item's three verdicts come at once (about a dozen tokens, no reasoning). The model
    /// was trained to reason first: run `predict` both ways and compare the F1s to measure what
    /// this mode costs. A folder holds one mode (run.json records it).
    #[arg(long)]
    pub verdict_first: bool,
}

/// One dataset of the run, read and planned before the model loads (bad input fails fast).
struct DatasetRun {
    spec: &'static DatasetSpec,
    planned: Vec<PlannedItem>,
    /// The benchmark file's items this run covers (WildGuardTest's labels).
    covered_items: Vec<BenchmarkItem>,
    total_items: usize,
    path: PathBuf,
}

pub fn run(args: PredictArgs) -> Result<u8> {
    let started = Instant::now();
    let runs = plan(&args)?;
    let model = args.model.open()?;
    let manifest = RunManifest {
        engine: "native".into(),
        model: args.model.source.model.clone(),
        model_identity: model.identity.clone(),
        backend: args.model.backend.name().into(),
        quant: args.model.quant.name().into(),
        context: args.model.context_or(None),
        max_new_tokens: args.max_new_tokens,
        verdict_first: args.verdict_first,
    };
    check_manifest(&args.out, &manifest)?;
    let load_started = Instant::now();
    let batch = args.batch.map_or_else(|| default_batch(args.model.backend), usize::from);
    let mut session = args.model.load_batched(model, batch, manifest.context)?;
    let load_s = load_started.elapsed().as_secs_f64();
    let mut summary = RunSummary::new();
    if predict(&args, &runs, &mut session, &mut summary)? == Outcome::Interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    let report = score(&runs)?;
    print!("{}", report.to_tables());
    let engine = serde_json::json!({
        "engine": "native",
        "backend": session.backend(),
        "fallback": session.fallback(),
        "batch": session.batch(),
    });
    let engine = engine.as_object().cloned().unwrap_or_default();
    let summary = summary.to_json(
        &manifest,
        args.shard,
        args.limit,
        engine,
        load_s,
        started.elapsed().as_secs_f64(),
        serde_json::to_value(&report)?,
    );
    let path = args.out.join(SUMMARY_FILE);
    std::fs::write(&path, format!("{summary:#}\n")).with_context(|| format!("writing {}", path.display()))?;
    let report_path = args.out.join(REPORT_FILE);
    std::fs::write(&report_path, report_html(&summary))
        .with_context(|| format!("writing {}", report_path.display()))?;
    if !args.model.quiet {
        eprintln!("report: {}", report_path.display());
    }
    println!("{summary}");
    Ok(0)
}

/// The scores file beside a predictions file.
fn scores_path(predictions: &Path) -> PathBuf {
    predictions.with_file_name(SCORES_FILE)
}

fn benchmark_path(dir: &Path, spec: &DatasetSpec) -> PathBuf {
    dir.join(format!("{}.json", spec.benchmark_file))
}

/// The datasets asked for (all whose file is present by default), each read and planned.
fn plan(args: &PredictArgs) -> Result<Vec<DatasetRun>> {
    if !args.benchmark_dir.is_dir() {
        bail!("--benchmark-dir {}: not a folder", args.benchmark_dir.display());
    }
    let specs: Vec<&'static DatasetSpec> = if args.datasets.is_empty() {
        DATASETS.iter().filter(|spec| benchmark_path(&args.benchmark_dir, spec).is_file()).collect()
    } else {
        args.datasets
            .iter()
            .map(|name| {
                DATASETS.iter().find(|spec| spec.name == name.as_str()).with_context(|| {
                    let names: Vec<&str> = DATASETS.iter().map(|spec| spec.name).collect();
                    format!("unknown dataset `{name}`; the paper's are {}", names.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    if specs.is_empty() {
        bail!("no benchmark files in {}", args.benchmark_dir.display());
    }
    let mut specs = specs;
    let mut seen = std::collections::HashSet::new();
    specs.retain(|spec| seen.insert(spec.name)); // a dataset named twice runs once
    specs
        .into_iter()
        .map(|spec| {
            let file = benchmark_path(&args.benchmark_dir, spec);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read the benchmark file of {}", file.display(), spec.name))?;
            let items = parse_benchmark_json(&file.display().to_string(), &text)?;
            let planned = plan_items(&file.display().to_string(), &items, args.limit, args.shard)?;
            let range = args.shard.select(items.len(), args.limit);
            let covered_items = items[range].to_vec();
            Ok(DatasetRun {
                spec,
                planned,
                covered_items,
                total_items: items.len(),
                path: args.out.join(spec.name).join(PREDICTIONS_FILE),
            })
        })
        .collect()
}

/// `run.json` records what the folder's predictions were made with; a rerun must match it. It
/// binds the folder only once the folder holds predictions (a run that failed before its first
/// item leaves a manifest and nothing else).
fn check_manifest(out: &Path, manifest: &RunManifest) -> Result<()> {
    let path = out.join(MANIFEST_FILE);
    let has_predictions = DATASETS
        .iter()
        .any(|spec| std::fs::metadata(out.join(spec.name).join(PREDICTIONS_FILE)).is_ok_and(|m| m.len() > 0));
    if let Some(text) = std::fs::read_to_string(&path).ok().filter(|_| has_predictions) {
        return manifest.check_against(&text, &out.display().to_string()).map_err(anyhow::Error::msg);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&path, manifest.to_file_text()).with_context(|| format!("writing {}", path.display()))
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Finished,
    Interrupted,
}

/// Runs every planned item not yet in its dataset's file, each line written and synced as soon as
/// its item is done.
fn predict(
    args: &PredictArgs,
    runs: &[DatasetRun],
    session: &mut Session,
    summary: &mut RunSummary,
) -> Result<Outcome> {
    super::interrupted(); // Ctrl-C from here on stops after the current token; finished items stay
    let mut options = RunOptions::new(args.max_new_tokens);
    options.verdict_first = args.verdict_first;
    let batch = session.batch();
    for run in runs {
        let name = run.spec.name;
        let existing = match std::fs::read(&run.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", run.path.display())),
        };
        let point = resume_point(&run.path.display().to_string(), &existing, &run.planned)?;
        std::fs::create_dir_all(run.path.parent().expect("a dataset folder"))
            .with_context(|| format!("creating the folder of {}", run.path.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&run.path)
            .with_context(|| format!("opening {}", run.path.display()))?;
        if point.partial_bytes > 0 {
            eprintln!(
                "{name}: dropping an unfinished last line ({} bytes) of {}",
                point.partial_bytes,
                run.path.display()
            );
            file.set_len(point.keep_bytes as u64).with_context(|| format!("truncating {}", run.path.display()))?;
        }
        // The scores file keeps the lines of the items kept (a line past them is an item whose
        // prediction was not written).
        let scores_path = scores_path(&run.path);
        let kept = match std::fs::read_to_string(&scores_path) {
            Ok(text) => kept_scores(&scores_path.display().to_string(), &text, point.done)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", scores_path.display())),
        };
        std::fs::write(&scores_path, kept).with_context(|| format!("writing {}", scores_path.display()))?;
        let mut scores_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&scores_path)
            .with_context(|| format!("opening {}", scores_path.display()))?;
        if point.done > 0 {
            eprintln!(
                "{name}: resuming after {} of {} items already in {}",
                point.done,
                run.planned.len(),
                run.path.display()
            );
        }
        summary.start_dataset(name, run.planned.len(), run.total_items);
        let bar = indicatif::ProgressBar::new(run.planned.len() as u64).with_position(point.done as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>22} {bar:30} {pos}/{len} items {msg} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name);
        let todo = &run.planned[point.done..];
        let dataset_started = Instant::now();
        let (mut tokens, mut written) = (0usize, 0usize);
        // Items finish out of order; each line is written once every item before it is, and a
        // failed item ends the run there.
        let texts: Vec<&str> = todo.iter().map(|item| item.prompt.as_str()).collect();
        let (stats, interrupted) = super::classify_in_order(session, &texts, &options, &mut |k, result| {
            let item = &todo[k];
            let result = result.with_context(|| format!("item {} of the benchmark file", item.index + 1))?;
            // The scores line first: a prediction line always has its scores beside it.
            let line = point.done + k + 1;
            scores_file
                .write_all(scores_line(line, &result.scores).as_bytes())
                .with_context(|| format!("writing {}", scores_path.display()))?;
            file.write_all(prediction_line(&item.prompt, item.label.as_deref(), &result.text).as_bytes())
                .and_then(|_| file.sync_data())
                .with_context(|| format!("writing {}", run.path.display()))?;
            let t = &result.timings;
            summary.add_item(
                result.new_tokens,
                result.prompt_tokens,
                result.reused_tokens,
                t.total_seconds,
                t.time_to_first_token_seconds.unwrap_or(t.total_seconds),
            );
            tokens += result.new_tokens;
            written += 1;
            let wall = dataset_started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.1} tokens/s", tokens as f64 / wall));
            bar.inc(1);
            // Off a terminal (a log, CI) the bar is not drawn: a line per item instead.
            if bar.is_hidden() && !args.model.quiet {
                let done = point.done + written;
                let eta = (run.planned.len() - done) as f64 * wall / written as f64;
                eprintln!(
                    "{name} {done}/{} items, {} tokens in {:.1} s ({:.1} tokens/s so far), eta {eta:.0} s",
                    run.planned.len(),
                    result.new_tokens,
                    t.total_seconds,
                    tokens as f64 / wall
                );
            }
            Ok(())
        })
        .with_context(|| name.to_string())?;
        if interrupted {
            bar.abandon();
            eprintln!(
                "interrupted: the finished items are in {}; run the same command again to resume",
                args.out.display()
            );
            return Ok(Outcome::Interrupted);
        }
        let seconds = dataset_started.elapsed().as_secs_f64();
        summary.set_generation_s(seconds);
        bar.finish();
        if bar.is_hidden() {
            eprintln!(
                "{name}: {} items ({} new), {tokens} tokens in {seconds:.1} s",
                run.planned.len(),
                run.planned.len() - point.done
            );
        }
        if stats.refills > 0 || batch > 1 {
            eprintln!(
                "{name}: batch of {batch}: {} decode steps, {:.1} sequences a step, {} slots refilled mid-run",
                stats.steps,
                stats.decode_rows as f64 / stats.steps.max(1) as f64,
                stats.refills
            );
        }
    }
    Ok(Outcome::Finished)
}

/// Scores every dataset's whole file (earlier runs' items included) with the paper's rules.
fn score(runs: &[DatasetRun]) -> Result<EvalReport> {
    let mut predictions = Vec::new();
    let mut wild_guard_items = None;
    for run in runs {
        let source = run.path.display().to_string();
        let text = std::fs::read_to_string(&run.path).with_context(|| format!("reading {source}"))?;
        let scores_path = scores_path(&run.path);
        let scores = match std::fs::read_to_string(&scores_path) {
            Ok(text) => parse_scores_jsonl(&scores_path.display().to_string(), &text)?,
            Err(_) => Default::default(),
        };
        predictions.push(DatasetPredictions {
            dataset: run.spec.name.to_string(),
            records: parse_predictions_jsonl(&source, &text)?,
            source,
            scores,
        });
        if run.spec.ground_truth == GroundTruthSource::BenchmarkFields {
            wild_guard_items = Some(run.covered_items.as_slice());
        }
    }
    Ok(evaluate(&predictions, wild_guard_items)?)
}
