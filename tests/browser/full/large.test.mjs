// Large models load every time in headless Chromium: GuardReasoner-1B-shaped files written by
// `guardreasoner synth` (GGUF Q4_0 703 MB, GGUF Q8_0 1.3 GB, and the bf16 Hugging Face folder of
// 2.47 GB that the real checkpoint is) each load twice in a row on the wasm CPU fallback, and the
// smallest and the largest once on WebGPU (SwiftShader without a GPU), through
// scripts/load-bench.mjs, which serves them from 127.0.0.1 as the evaluator does. Each load is
// followed by a token. The files are written once per run and deleted after; load times and the
// peak memory are logged, and a GGUF's load on the CPU path peaks at most 1.25x the file over a
// tiny model's load (10-in-a-row runs: `node scripts/load-bench.mjs --times 10`).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { repo } from "../harness.mjs";

const dir = path.join(repo, ".cache/large-models");
const cli = path.join(repo, "target/release/guardreasoner");
const MODELS = { q4: path.join(dir, "synth-q4_0.gguf"), q8: path.join(dir, "synth-q8_0.gguf"), bf16: path.join(dir, "synth-bf16") };

before(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const [quant, out] of Object.entries(MODELS)) execFileSync(cli, ["synth", "--quant", quant, "--out", out], { stdio: "ignore" });
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function loadBench(model, backend, times, extra = []) {
  const out = execFileSync(process.execPath, [path.join(repo, "scripts/load-bench.mjs"), "--model", model, "--backend", backend, "--times", String(times), "--json", ...extra], {
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || "/tmp" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return JSON.parse(out.toString().trim().split("\n").at(-1));
}

for (const [name, backend, times] of [
  ["q4", "cpu", 2],
  ["q8", "cpu", 2],
  ["bf16", "cpu", 2],
  ["q4", "webgpu", 1],
  ["bf16", "webgpu", 1],
]) {
  test(`the 1B-shaped ${name} model loads ${times} time(s) in a row on ${backend}`, () => {
    let report;
    try {
      report = loadBench(MODELS[name], backend, times);
    } catch (e) {
      // load-bench exits 1 when a load failed; its report is still the last line
      report = JSON.parse(String(e.stdout).trim().split("\n").at(-1));
    }
    // The first load's peak PSS over a tiny model's load, against the file (issue 29's bound:
    // 1.25x what the model holds, which for a GGUF on the CPU is its blocks as stored).
    const overFile = (report.peak_pss_per_load_bytes[0] - report.baseline_peak_pss_bytes) / report.bytes;
    console.log(`${name} on ${backend}: loads ${report.seconds.join(", ")} s, first load's peak ${overFile.toFixed(2)}x the files over the tiny load`);
    assert.deepEqual(report.errors, []);
    assert.equal(report.succeeded, times);
    if (backend === "cpu" && name !== "bf16") assert.ok(overFile <= 1.25, `peak ${overFile.toFixed(2)}x the file`);
  });
}

// A context the wasm heap cannot hold (the model's whole 131072 positions: 8 GiB of KV cache
// beside 0.7 GB of weights in 4 GiB) is refused before the weights load, with the option to
// change, and the same page then loads the model with a context that fits.
test("a KV cache the wasm heap cannot hold is a clear error and the page stays usable", () => {
  let report;
  try {
    report = loadBench(MODELS.q4, "cpu", 2, ["--context", "131072,64"]);
  } catch (e) {
    report = JSON.parse(String(e.stdout).trim().split("\n").at(-1));
  }
  const [refused, fine] = report.outcomes;
  assert.equal(refused.ok, false, "131072 positions must not load");
  assert.match(refused.error, /KV cache of 131072 tokens for 1 conversation needs 8\.\d\d GiB, and reading a prompt that long \d+\.\d\d GiB more, more than the [\d.]+ GiB of memory left beside the weights; lower the context or the batch/);
  assert.deepEqual(fine, { context: 64, ok: true, error: null });
});
