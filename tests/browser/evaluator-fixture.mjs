// What the evaluator's browser tests share (tests/browser/evaluate.test.mjs, the fast tier, and
// tests/browser/full/evaluate-long.test.mjs): the tiny golden model over two of the paper's
// datasets, the evaluator run to its end, and the native CLI's predictions for the same items.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { repo } from "./harness.mjs";

export const benchmarkDir = path.resolve(repo, process.env.GUARDREASONER_SHARED || "../shared", "guardreasoner/benchmark");
export const model = path.join(repo, ".cache/tiny-rebuilt/llama32");
export const native = path.join(repo, "target/release/guardreasoner");
export const DATASETS = ["SimpleSafetyTests", "HarmBenchResponse"];
export const BENCHMARK_FILES = { SimpleSafetyTests: "0_0_SimpleSafetyTests.json", HarmBenchResponse: "0_5_harmbench_response.json" };
export const LIMIT = 3;
// Enough tokens that an item takes a moment on the wasm CPU path (the kill test needs that),
// few enough that the WebGPU run on SwiftShader stays short (about 20 s for all six items).
export const NEW_TOKENS = 48;
export const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gr-evaluate-"));

let runs = 0;
/** The evaluator's command line, with a browser profile of its own. */
export const evaluatorArgs = (args) => [path.join(repo, "evaluator/evaluate.mjs"), "--profile", path.join(tmp, `profile-${runs++}`), ...args];

/** Run the evaluator to the end; resolves to {code, stdout, stderr}. */
export function evaluate(args, { timeoutMs = 15 * 60_000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, evaluatorArgs(args), { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (code) => (clearTimeout(timer), resolve({ code, stdout, stderr })));
  });
}

export const common = (out, extra = []) => ["--model", model, "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(LIMIT), "--out", out, ...extra];
export const cpuRun = (out, extra = []) => common(out, ["--backend", "cpu", "--quant", "f32", "--max-new-tokens", String(NEW_TOKENS), ...extra]);
export const predictionsFile = (dir, dataset) => path.join(dir, dataset, "generated_predictions.jsonl");
export const records = (dir, dataset) => fs.readFileSync(predictionsFile(dir, dataset), "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));
export const benchmark = (dataset) => JSON.parse(fs.readFileSync(path.join(benchmarkDir, BENCHMARK_FILES[dataset]), "utf8"));

/** What the tests need before they start: the tiny model (written by cargo test), the wasm
 * package, the native CLI and the benchmark files. */
export function assertPrerequisites() {
  for (const [what, file] of [["the tiny model (run cargo test first)", path.join(model, "model.safetensors")], ["www/pkg/ (run scripts/build-wasm.sh)", path.join(repo, "www/pkg/guardreasoner_bg.wasm")], ["the native CLI (cargo build --release)", native], ["the benchmark files", benchmarkDir]]) {
    assert.ok(fs.existsSync(file), `missing ${what}: ${file}`);
  }
}

/** The native CLI's predictions for the same items (same selection code, native engine, f32
 * weights as the browser runs are given). */
export function nativePredictions(out, maxNewTokens) {
  const r = spawnSync(native, ["predict", "--model", model, "--quiet", "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(LIMIT), "--max-new-tokens", String(maxNewTokens), "--quant", "none", "--out", out], { encoding: "utf8" });
  assert.equal(r.status, 0, `native predict failed: ${r.stderr}`);
  return out;
}
