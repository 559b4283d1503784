//! `guardreasoner predict`, the native twin of the browser evaluator, on the tiny golden model over
//! two of the paper's benchmark files: the paper's layout, resuming a folder (a longer --limit
//! goes on where the shorter run stopped and ends as a fresh run would), and clear refusals that
//! leave finished results as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DATASETS: &str = "SimpleSafetyTests,HarmBenchResponse";
const NEW_TOKENS: &str = "12";

fn benchmark_dir() -> PathBuf {
    common::shared_dir().join("guardreasoner/benchmark")
}

fn predict(out: &Path, extra: &[&str]) -> Output {
    predict_with_env(out, extra, &[])
}

fn predict_with_env(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let model = common::tiny::tiny_folder("llama32");
    let bench = benchmark_dir();
    let mut args = vec![
        "predict",
        "--quiet",
        "--model",
        model.to_str().unwrap(),
        "--benchmark-dir",
        bench.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if !extra.contains(&"--max-new-tokens") {
        args.extend(["--max-new-tokens", NEW_TOKENS]);
    }
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_guardreasoner")).args(&args).envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn predictions(out: &Path, dataset: &str) -> String {
    std::fs::read_to_string(out.join(dataset).join("generated_predictions.jsonl")).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::cache_dir().join("scratch/cli-predict").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn writes_the_paper_layout_and_resumes() {
    let fresh = scratch("fresh");
    let run = predict(&fresh, &["--datasets", DATASETS, "--limit", "3"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("prompt harmfulness detection task") && stdout.contains("response harmfulness detection task"),
        "{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["new_items"], 6);
    assert!(fresh.join("summary.json").is_file() && fresh.join("run.json").is_file());
    let bench: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(benchmark_dir().join("0_0_SimpleSafetyTests.json")).unwrap())
            .unwrap();
    let lines: Vec<serde_json::Value> =
        predictions(&fresh, "SimpleSafetyTests").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (line, item) in lines.iter().zip(&bench) {
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            line["prompt"].as_str().unwrap(),
            format!("{}\n{}", item["instruction"].as_str().unwrap(), item["input"].as_str().unwrap())
        );
        assert_eq!(line["label"], item["output"]);
        assert!(!line["predict"].as_str().unwrap().is_empty());
    }

    let resumed = scratch("resumed");
    let first = predict(&resumed, &["--datasets", DATASETS, "--limit", "2"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = predict(&resumed, &["--datasets", DATASETS, "--limit", "3"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stderr = text(&second.stderr);
    assert!(stderr.contains("SimpleSafetyTests: resuming after 2 of 3 items"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(text(&second.stdout).trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["new_items"], 2, "only the third item of each dataset is new");
    for dataset in ["SimpleSafetyTests", "HarmBenchResponse"] {
        assert_eq!(predictions(&resumed, dataset), predictions(&fresh, dataset), "{dataset}");
    }
}

#[test]
fn refuses_bad_input_and_keeps_results() {
    let out = scratch("refusals");
    assert!(predict(&out, &["--datasets", "SimpleSafetyTests", "--limit", "2"]).status.success());
    let kept = predictions(&out, "SimpleSafetyTests");
    let refused = |extra: &[&str], message: &str| {
        let run = predict(&out, extra);
        let stderr = text(&run.stderr);
        assert!(!run.status.success() && stderr.contains(message), "expected `{message}` in: {stderr}");
        assert_eq!(predictions(&out, "SimpleSafetyTests"), kept, "results kept after: {stderr}");
    };
    refused(&["--datasets", "NoSuchSet"], "unknown dataset `NoSuchSet`");
    refused(&["--datasets", "SimpleSafetyTests", "--shard", "2/2"], "need 0 <= I < N");
    refused(&["--datasets", "SimpleSafetyTests", "--limit", "1"], "holds 2 predictions but this run selects 1 items");
    refused(
        &["--datasets", "SimpleSafetyTests", "--limit", "2", "--max-new-tokens", "3"],
        "holds a run with max_new_tokens = 12",
    );
    refused(
        &["--datasets", "SimpleSafetyTests", "--shard", "1/2", "--limit", "4"],
        "its prompt is not that of benchmark item 3",
    );
    let lonely = out.with_file_name("one-file-bench");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::copy(benchmark_dir().join("0_0_SimpleSafetyTests.json"), lonely.join("0_0_SimpleSafetyTests.json"))
        .unwrap();
    let model = common::tiny::tiny_folder("llama32");
    let run = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args([
            "predict",
            "--quiet",
            "--model",
            model.to_str().unwrap(),
            "--benchmark-dir",
            lonely.to_str().unwrap(),
            "--datasets",
            DATASETS,
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            NEW_TOKENS,
        ])
        .output()
        .unwrap();
    let stderr = text(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("cannot read the benchmark file of HarmBenchResponse"),
        "{stderr}"
    );
    assert_eq!(predictions(&out, "SimpleSafetyTests"), kept);
}

#[test]
fn wild_guard_labels_come_from_the_items_the_shard_covers() {
    // No WildGuardTest file ships here: make one from SimpleSafetyTests items with the paper's
    // label fields. Shard 1/2 of 4 items covers items 3 and 4.
    let dir = scratch("wildguard-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let mut items: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(benchmark_dir().join("0_0_SimpleSafetyTests.json")).unwrap())
            .unwrap();
    items.truncate(4);
    for (i, item) in items.iter_mut().enumerate() {
        item["prompt_harm_label"] = (if i % 2 == 1 { "harmful" } else { "unharmful" }).into();
        item["response_harm_label"] = "unharmful".into();
        item["response_refusal_label"] = if i == 2 { serde_json::Value::Null } else { "refusal".into() };
    }
    std::fs::write(dir.join("0_4_wild_guard_test.json"), serde_json::to_string(&items).unwrap()).unwrap();
    let out = scratch("wildguard-out");
    let model = common::tiny::tiny_folder("llama32");
    let run = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args([
            "predict",
            "--quiet",
            "--model",
            model.to_str().unwrap(),
            "--benchmark-dir",
            dir.to_str().unwrap(),
            "--shard",
            "1/2",
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "2",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let scores = &summary["scores"]["datasets"][0];
    assert_eq!(scores["name"], "WildGuardTest");
    let task = |name: &str| scores["scores"].as_array().unwrap().iter().find(|s| s["task"] == name).unwrap().clone();
    // The tiny model's noise never answers: item 3 (unharmful) counts twice, item 4 (harmful) drops.
    assert_eq!(
        (task("prompt_harmfulness")["counted_pairs"].clone(), task("prompt_harmfulness")["dropped_items"].clone()),
        (2.into(), 1.into())
    );
    // Item 3's refusal label is null (skipped); item 4's is "refusal", counted twice.
    assert_eq!(
        (task("refusal")["null_labels"].clone(), task("refusal")["counted_pairs"].clone()),
        (1.into(), 2.into())
    );
}

/// Without `--batch` the CPU decodes as many items together as its block kernel's tile holds:
/// the kernel the run uses, also when GUARDREASONER_CPU_KERNEL forces a slower one.
#[test]
fn the_cpu_default_batch_is_the_kernels_tile() {
    use guardreasoner::backend::cpu_blocks::Kernel;
    for kernel in Kernel::available() {
        let out = scratch(&format!("default-batch-{}", kernel.name()));
        let args = ["--datasets", "SimpleSafetyTests", "--limit", "1", "--max-new-tokens", "4"];
        let run = predict_with_env(&out, &args, &[("GUARDREASONER_CPU_KERNEL", kernel.name())]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        let summary: serde_json::Value =
            serde_json::from_str(text(&run.stdout).trim().lines().last().unwrap()).unwrap();
        assert_eq!(summary["batch"], kernel.tile_tokens() as u64, "{}", kernel.name());
    }
}

/// `--batch` never changes a prediction on the CPU: see `every_batch_size_writes_the_same_predictions_on`.
#[test]
fn every_batch_size_writes_the_same_predictions() {
    every_batch_size_writes_the_same_predictions_on("cpu");
}

/// The same on the GPU (lavapipe here).
#[test]
#[ignore = "full tier: about a minute of lavapipe; the fast tier keeps the GPU's bit-for-bit batch checks per kernel (tests/gpu_engine.rs) and the zoo's predict at batch 1 and the default batch on lavapipe (tests/zoo.rs)"]
fn every_batch_size_writes_the_same_predictions_on_the_gpu() {
    every_batch_size_writes_the_same_predictions_on("gpu");
}

/// `--batch` never changes a prediction: 12 items of two datasets (prompts of different lengths)
/// at batch 1, 4 and 8 write byte-identical files on `backend`; at batch 4 slots are refilled
/// mid-run; and a context that fills up mid-answer cuts the answers where they are cut alone.
fn every_batch_size_writes_the_same_predictions_on(backend: &str) {
    let mut files: Vec<(String, String)> = Vec::new();
    for batch in ["1", "4", "8"] {
        let out = scratch(&format!("batch-{backend}-{batch}"));
        let run = predict(
            &out,
            &["--datasets", "SimpleSafetyTests,ToxicChat", "--limit", "12", "--backend", backend, "--batch", batch],
        );
        let stderr = text(&run.stderr);
        assert!(run.status.success(), "{backend} batch {batch}: {stderr}");
        if batch == "4" {
            assert!(
                stderr.contains("SimpleSafetyTests: batch of 4:") && !stderr.contains(" 0 slots refilled"),
                "{stderr}"
            );
        }
        let summary: serde_json::Value =
            serde_json::from_str(text(&run.stdout).trim().lines().last().unwrap()).unwrap();
        assert_eq!(summary["batch"], batch.parse::<u64>().unwrap());
        let both = predictions(&out, "SimpleSafetyTests") + &predictions(&out, "ToxicChat");
        assert_eq!(both.lines().count(), 24);
        files.push((batch.to_string(), both));
    }
    for (batch, both) in &files[1..] {
        assert!(both == &files[0].1, "{backend}: batch {batch} wrote other predictions than batch 1");
    }
    // A context that fills up mid-answer (prompts of about 120 tokens, 160 in all): the
    // answers are cut where they are cut alone.
    let cut: Vec<String> = ["1", "4"]
        .iter()
        .map(|batch| {
            let out = scratch(&format!("context-{backend}-{batch}"));
            let args = ["--datasets", "SimpleSafetyTests", "--limit", "8", "--max-new-tokens", "64"];
            let run =
                predict(&out, &[&args[..], &["--context", "160", "--backend", backend, "--batch", batch]].concat());
            assert!(run.status.success(), "{}", text(&run.stderr));
            predictions(&out, "SimpleSafetyTests")
        })
        .collect();
    assert!(cut[0] == cut[1], "{backend}: a full context cuts batch 4's answers elsewhere than batch 1's");
}

/// Off a terminal (stderr piped, as in a log or CI) the progress bar is not drawn: a line per item
/// says how far the run is.
#[test]
fn off_a_terminal_predict_says_each_item_on_a_line() {
    let out = scratch("lines");
    let model = common::tiny::tiny_folder("llama32");
    let bench = benchmark_dir();
    let run = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["predict", "--model", model.to_str().unwrap(), "--benchmark-dir", bench.to_str().unwrap()])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--datasets",
            "SimpleSafetyTests",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
        ])
        .output()
        .unwrap();
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for done in ["1/2", "2/2"] {
        let line = format!("SimpleSafetyTests {done} items, 4 tokens in ");
        assert!(stderr.contains(&line), "`{line}` in: {stderr}");
    }
}
