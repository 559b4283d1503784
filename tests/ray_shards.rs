//! A run split across a local Ray cluster (`scripts/ray-predict.py`, 2 workers): one Ray task
//! per `predict --shard I/2`; the worker running shard 1 is killed (SIGKILL) once the shard has
//! written its first line, Ray retries the task and the shard resumes; the merged files are byte
//! for byte the unsplit run's and score the same. Ray comes from the venv
//! scripts/fetch-test-assets.sh makes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DATASETS: &str = "SimpleSafetyTests,ToxicChat";

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// The pid of a live process whose command line holds every one of `words`, and its parent's.
fn process_with(words: &[&str]) -> Option<(u32, u32)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if words.iter().all(|w| args.iter().any(|a| a == w)) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so read after its closing paren.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            return Some((pid, ppid));
        }
    }
    None
}

#[test]
#[ignore = "full tier: a local Ray cluster, from the ~80 MB Ray install that scripts/fetch-test-assets.sh --full makes"]
fn shards_on_ray_survive_a_killed_worker_and_merge_to_the_unsplit_run() {
    let python = common::cache_dir().join("ray-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/fetch-test-assets.sh --full (it installs Ray)",
        python.display()
    );
    let binary = env!("CARGO_BIN_EXE_guardreasoner");
    let model = common::tiny::tiny_folder("llama32");
    let benchmark = common::shared_dir().join("guardreasoner/benchmark");
    let work = common::cache_dir().join("scratch/ray-shards");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let (reference, split) = (work.join("unsplit"), work.join("ray"));
    let predict_args: Vec<String> = [
        "--model",
        model.to_str().unwrap(),
        "--benchmark-dir",
        benchmark.to_str().unwrap(),
        "--datasets",
        DATASETS,
        "--limit",
        "10",
        "-n",
        "160",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let unsplit = Command::new(binary)
        .args(["predict", "--quiet"])
        .args(&predict_args)
        .args(["--out", reference.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(unsplit.status.success(), "{}", String::from_utf8_lossy(&unsplit.stderr));

    let mut ray = Command::new(&python)
        .arg(common::repo_dir().join("scripts/ray-predict.py"))
        .args(["--shards", "2", "--num-cpus", "2", "--out", split.to_str().unwrap(), "--binary", binary, "--"])
        .args(&predict_args)
        // One item at a time, so lines come one by one and the kill lands mid-shard (a batch of
        // five items can finish them within a millisecond); the unsplit run kept its default
        // batch, so the merge below also holds the batch sizes against each other.
        .args(["--batch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the Ray worker that runs shard 1 once the shard has written its first line.
    let first_file = split.join("shards/1-of-2/SimpleSafetyTests/generated_predictions.jsonl");
    let started = Instant::now();
    let killed = loop {
        assert!(started.elapsed() < Duration::from_secs(300), "shard 1 never started writing");
        if ray.try_wait().unwrap().is_some() {
            break None;
        }
        if line_count(&first_file) >= 1
            && let Some((predict, worker)) = process_with(&["predict", "--shard", "1/2"])
        {
            let status = Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
            assert!(status.success());
            break Some((predict, worker, line_count(&first_file)));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = ray.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let (_, _, lines_at_kill) = killed.expect("the run ended before shard 1's worker could be killed");
    assert!(lines_at_kill < 5, "killed mid-shard ({lines_at_kill} of 5 lines)");
    // Ray ran shard 1 again, and the new try resumed from the lines already written.
    assert!(
        stderr.lines().any(|l| l.starts_with("shard 1/2: done") && l.contains("SimpleSafetyTests: resuming after")),
        "{stderr}"
    );

    for dataset in DATASETS.split(',') {
        let file = |dir: &PathBuf| std::fs::read(dir.join(dataset).join("generated_predictions.jsonl")).unwrap();
        assert_eq!(file(&split), file(&reference), "{dataset}: the merged file is the unsplit run's");
    }
    let scores = |dir: &PathBuf| {
        let out = Command::new(binary)
            .args(["eval", "--json", "--predictions", dir.to_str().unwrap(), "--benchmark-dir"])
            .arg(&benchmark)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(
        std::fs::read(split.join("scores.json")).unwrap(),
        scores(&reference),
        "scored once, as the unsplit run"
    );
    assert!(split.join("report.html").is_file());
}
