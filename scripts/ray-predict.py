#!/usr/bin/env python3
"""A benchmark run split across machines with Ray: one Ray task per `guardreasoner predict
--shard I/N`, retried when it fails or its worker dies (the retry resumes the shard's own
folder), then the shards' files concatenated in order and scored once.

Usage:
  scripts/ray-predict.py --shards N --out DIR [--address auto] [--retries 3] [--binary PATH] \\
      -- --model M --benchmark-dir B [any other `guardreasoner predict` option]

Without --address a local Ray cluster is started on this machine (--num-cpus, default: one per
core); with --address auto (or host:port) the tasks go to an existing cluster, whose machines must
see the same --out, model and benchmark paths (a shared filesystem) and have the binary. Each
shard gets --cpus-per-shard CPUs (and as many predict threads) and --gpus-per-shard GPUs from
Ray, and loads its own copy of the model: size them so that the shards a machine runs at once
fit in its memory. A Hub repo id as --model is downloaded once, here, before the shards start
(HF_* variables are passed on to the workers).

Writes DIR/shards/I-of-N/ (each shard's predict folder: predictions, run.json, summary.json),
then DIR/<Dataset>/generated_predictions.jsonl (the shards concatenated in benchmark order, byte
for byte the unsplit run's), DIR/run.json, DIR/scores.json and DIR/report.html (the paper's
scoring of the merged files, `guardreasoner eval`). A rerun with the same options resumes: done
shards are skipped by predict itself, partial ones resume. See ARCHITECTURE.md §7.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREDICTIONS_FILE = "generated_predictions.jsonl"  # Rust guard::PREDICTIONS_FILE
MANIFEST_FILE = "run.json"  # Rust guard::MANIFEST_FILE
REPORT_FILE = "report.html"  # Rust guard::REPORT_FILE
# predict options that name a path: made absolute, since a Ray worker's working folder is its own.
PATH_OPTIONS = {"--model", "-m", "--benchmark-dir"}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Everything after -- goes to `guardreasoner predict` (not --shard or --out, which this script sets).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shards", type=int, required=True, help="how many shards (Ray tasks) to split the run into")
    parser.add_argument("--out", type=Path, required=True, help="output folder (merged files, shards under shards/)")
    parser.add_argument("--address", help="an existing Ray cluster (auto, or host:port); default: start a local one")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all cores)")
    parser.add_argument("--cpus-per-shard", type=int, default=1, help="CPUs Ray reserves for each shard, and its predict threads (default 1)")
    parser.add_argument("--gpus-per-shard", type=float, default=0, help="GPUs Ray reserves for each shard (for --backend gpu; default 0)")
    parser.add_argument("--retries", type=int, default=3, help="tries after the first, per shard (default 3)")
    parser.add_argument("--binary", help="the guardreasoner binary (default: on PATH, else target/release/)")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    for option in ("--shard", "--out"):
        if any(word == option or word.startswith(option + "=") for word in rest):
            parser.error(f"{option} is set by this script; do not pass it to predict")
    return args, rest


def find_binary(given):
    candidates = [given] if given else [shutil.which("guardreasoner"), str(REPO / "target/release/guardreasoner")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
    sys.exit(f"error: no guardreasoner binary ({given or 'not on PATH, nor target/release/'}): cargo install --path . , or pass --binary")


def absolute_paths(words):
    """predict's options with path values made absolute (a worker runs elsewhere)."""
    out = []
    expect_path = False
    for word in words:
        if expect_path:
            word = str(Path(word).resolve()) if Path(word).exists() else word
            expect_path = False
        elif word in PATH_OPTIONS:
            expect_path = True
        elif "=" in word and word.split("=", 1)[0] in PATH_OPTIONS:
            key, value = word.split("=", 1)
            word = f"{key}={Path(value).resolve()}" if Path(value).exists() else word
        out.append(word)
    return out


def run_shard(binary, predict_args, index, count, out):
    """One shard: `guardreasoner predict --shard index/count --out out`. Raises on failure, so
    Ray retries it; the retry resumes from what the folder holds. If the Ray worker dies, predict
    dies with it (a retry must never share the shard's folder with a predict still writing):
    util-linux `setpriv --pdeathsig KILL`, which sets it in the child before exec and is safe in
    a threaded worker."""
    command = [binary, "predict", *predict_args, "--shard", f"{index}/{count}", "--out", out]
    setpriv = shutil.which("setpriv")
    if setpriv:
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]
    else:
        print("warning: no setpriv (util-linux): a killed worker may leave its predict running", file=sys.stderr)
    started = time.time()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"shard {index}/{count}: predict exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    resumed = [line for line in done.stderr.splitlines() if "resuming after" in line]
    return {"shard": index, "seconds": time.time() - started, "resumed": resumed, "pid": os.getpid()}


def merge(out, count):
    """The shards' predictions concatenated in shard order per dataset (shards are contiguous
    slices), and their common run.json. Returns the dataset names."""
    shard_dirs = [out / "shards" / f"{i}-of-{count}" for i in range(count)]
    # What binds predictions (run.json without `model`, the path as typed) must be the same.
    manifests = [json.loads((d / MANIFEST_FILE).read_text()) for d in shard_dirs]
    binding = [{k: v for k, v in m.items() if k != "model"} for m in manifests]
    if any(b != binding[0] for b in binding):
        sys.exit("error: the shards' run.json differ (different models or settings); they cannot be merged")
    datasets = sorted({p.parent.name for d in shard_dirs for p in d.glob(f"*/{PREDICTIONS_FILE}")})
    stale = sorted(p.parent.name for p in out.glob(f"*/{PREDICTIONS_FILE}") if p.parent.name not in datasets)
    if stale:
        sys.exit(f"error: {out} holds {', '.join(stale)} from another run, which would be scored with this one: use another --out")
    for dataset in datasets:
        target = out / dataset / PREDICTIONS_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".jsonl.part")
        with open(partial, "wb") as merged:
            for d in shard_dirs:
                source = d / dataset / PREDICTIONS_FILE
                if source.exists():
                    merged.write(source.read_bytes())
        os.replace(partial, target)  # a crash never leaves a half-merged file under the real name
    (out / MANIFEST_FILE).write_text((shard_dirs[0] / MANIFEST_FILE).read_text())
    return datasets


def option_value(predict_args, names):
    """The value of the first of `names` in predict's options (`--x V` or `--x=V`), else None."""
    for i, word in enumerate(predict_args):
        if word in names and i + 1 < len(predict_args):
            return predict_args[i + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def main():
    args, rest = parse_args()
    binary = find_binary(args.binary)
    predict_args = absolute_paths(rest)
    out = args.out.resolve()
    (out / "shards").mkdir(parents=True, exist_ok=True)

    # Each shard's predict runs as many threads as Ray gives it CPUs, unless told otherwise.
    if option_value(predict_args, {"--threads", "-t"}) is None:
        predict_args += ["--threads", str(max(1, args.cpus_per_shard))]
    # A Hub repo id: downloaded once here (into the shared HF cache), not by every shard at once.
    model = option_value(predict_args, {"--model", "-m"})
    if model and not Path(model).exists():
        revision = option_value(predict_args, {"--revision"})
        fetch = [binary, "tokenize", "--model", model, "--text", "."] + (["--revision", revision] if revision else [])
        print(f"fetching {model} into the Hugging Face cache before the shards start...", file=sys.stderr)
        if subprocess.run(fetch, stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"error: could not get {model} (above)")

    import ray  # here, so --help works without Ray installed

    # The Hub's settings reach the workers (a cluster's workers have their own environment).
    env = {k: v for k, v in os.environ.items() if k.startswith("HF_")}
    runtime_env = {"env_vars": env} if env else None
    if args.address:
        ray.init(address=args.address, logging_level="WARNING", log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False, runtime_env=runtime_env)
    task = ray.remote(run_shard).options(
        num_cpus=args.cpus_per_shard, num_gpus=args.gpus_per_shard, max_retries=args.retries, retry_exceptions=True
    )
    pending = {
        task.remote(binary, predict_args, i, args.shards, str(out / "shards" / f"{i}-of-{args.shards}")): i
        for i in range(args.shards)
    }
    print(f"{args.shards} shards on Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs), up to {args.retries} retries each", file=sys.stderr)
    failed = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
            note = f", {'; '.join(result['resumed'])}" if result["resumed"] else ""
            print(f"shard {index}/{args.shards}: done in {result['seconds']:.1f} s{note}", file=sys.stderr)
        except Exception as e:  # the last try failed: report it, keep the others' work
            failed.append(index)
            print(f"shard {index}/{args.shards}: failed after {args.retries + 1} tries: {e}", file=sys.stderr)
    ray.shutdown()
    if failed:
        sys.exit(f"error: shard(s) {', '.join(map(str, failed))} failed; run the same command again to resume them")

    datasets = merge(out, args.shards)
    print(f"merged {args.shards} shards: {', '.join(datasets)}", file=sys.stderr)
    score = [binary, "eval", "--predictions", str(out), "--report", str(out / REPORT_FILE)]
    benchmarks = option_value(predict_args, {"--benchmark-dir"})
    if benchmarks:
        score += ["--benchmark-dir", benchmarks]
    tables = subprocess.run(score, check=True, stdout=subprocess.PIPE, text=True).stdout
    scores = subprocess.run([*score, "--json"], check=True, stdout=subprocess.PIPE, text=True).stdout
    (out / "scores.json").write_text(scores)
    sys.stdout.write(tables)
    print(json.dumps({"shards": args.shards, "datasets": datasets, "out": str(out)}))


if __name__ == "__main__":
    main()
