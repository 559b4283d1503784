// The evaluator's long runs (full tier; the rest of its tests are tests/browser/evaluate.test.mjs):
// --batch 1, 4 and 8 on WebGPU and 1 and 4 on the CPU fallback write the native CLI's
// predictions; faults injected mid-run (a lost GPU, a crashed page, a hung page) restart Chromium
// and the run ends with the native CLI's lines; a soak test kills the evaluator or its Chromium at
// 10 random moments and the files equal an uninterrupted run's.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { benchmarkDir, model, native, DATASETS, LIMIT, NEW_TOKENS, tmp, evaluatorArgs, evaluate, common, cpuRun, predictionsFile, assertPrerequisites, nativePredictions } from "../evaluator-fixture.mjs";
import { repo } from "../harness.mjs";

let nativeReference; // the native CLI's predictions for the items of the fault test

before(() => {
  assertPrerequisites();
  nativeReference = nativePredictions(path.join(tmp, "native"), NEW_TOKENS);
});

test("--batch never changes a prediction: batch 1, 4 and 8 on WebGPU, 1 and 4 on the CPU fallback", async () => {
  const batchRun = (backend, batch) => {
    const out = path.join(tmp, `batch-${backend}-${batch}`);
    const args = ["--model", model, "--benchmark-dir", benchmarkDir, "--datasets", "SimpleSafetyTests,ToxicChat", "--limit", "12", "--out", out];
    return evaluate([...args, "--backend", backend, "--quant", "f32", "--max-new-tokens", "16", "--batch", String(batch)]).then((r) => {
      assert.equal(r.code, 0, r.stderr);
      const summary = JSON.parse(r.stdout.trim().split("\n").at(-1));
      assert.equal(summary.batch, batch, "the summary records the batch");
      const text = (d) => fs.readFileSync(predictionsFile(out, d), "utf8");
      return text("SimpleSafetyTests") + text("ToxicChat");
    });
  };
  const nativeOut = path.join(tmp, "batch-native");
  const r = spawnSync(native, ["predict", "--quiet", "--model", model, "--benchmark-dir", benchmarkDir, "--datasets", "SimpleSafetyTests,ToxicChat", "--limit", "12", "--max-new-tokens", "16", "--batch", "1", "--quant", "none", "--out", nativeOut], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const reference = ["SimpleSafetyTests", "ToxicChat"].map((d) => fs.readFileSync(predictionsFile(nativeOut, d), "utf8")).join("");
  assert.equal(reference.split("\n").filter((l) => l).length, 24);
  for (const batch of [1, 4, 8]) assert.equal(await batchRun("webgpu", batch), reference, `WebGPU --batch ${batch} vs the native CLI`);
  for (const batch of [1, 4]) assert.equal(await batchRun("cpu", batch), reference, `CPU fallback --batch ${batch} vs the native CLI`);
});

/** Every process below `pid` (Linux /proc), deepest last. */
function descendants(pid) {
  const children = new Map();
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      // gone meanwhile
    }
  }
  const below = (p) => (children.get(p) ?? []).flatMap((c) => [c, ...below(c)]);
  return below(pid);
}

const killAll = (pids) => pids.forEach((p) => {
  try {
    process.kill(p, "SIGKILL");
  } catch {
    // gone meanwhile
  }
});

test("faults mid-run: a lost GPU, a crashed page and a hung page restart Chromium; an item that always hangs is written as failed", async () => {
  const out = path.join(tmp, "faults");
  // In flight: 2 items (batch 1). Each fault fires when its item is first handed to a page (the
  // "-always" one every time). On SwiftShader an item takes up to ~12 s, so twice that with the
  // one queued before it.
  const faults = { "SimpleSafetyTests:0": "hang", "SimpleSafetyTests:2": "hang-always", "HarmBenchResponse:0": "lose-gpu", "HarmBenchResponse:2": "crash" };
  const args = common(out, ["--backend", "webgpu", "--quant", "f32", "--batch", "1", "--max-new-tokens", String(NEW_TOKENS), "--item-timeout", "25", "--max-attempts", "2"]);
  const r = await new Promise((resolve) => {
    const child = spawn(process.execPath, evaluatorArgs(args), { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GUARDREASONER_EVALUATOR_FAULTS: JSON.stringify(faults) } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10 * 60_000);
    child.on("exit", (code) => (clearTimeout(timer), resolve({ code, stdout, stderr })));
  });
  assert.equal(r.code, 0, r.stderr);
  const restarts = r.stderr.split("\n").filter((l) => /restarting Chromium/.test(l));
  assert.match(restarts[0] ?? "", /^SimpleSafetyTests: SimpleSafetyTests item 1 .* took longer than 25 s/, r.stderr);
  assert.match(restarts[1] ?? "", /^SimpleSafetyTests: SimpleSafetyTests item 3 .* took longer than 25 s/, r.stderr);
  assert.match(restarts[2] ?? "", /^SimpleSafetyTests: SimpleSafetyTests item 3 .* took longer than 25 s/, r.stderr);
  assert.match(restarts[3] ?? "", /^HarmBenchResponse: the GPU device was lost/, r.stderr);
  assert.match(restarts[4] ?? "", /^HarmBenchResponse: the page crashed/, r.stderr);
  assert.equal(restarts.length, 5, `one restart per fault, two for the item that always hangs:\n${r.stderr}`);
  for (const dataset of DATASETS) {
    const got = fs.readFileSync(predictionsFile(out, dataset), "utf8").split("\n");
    const want = fs.readFileSync(predictionsFile(nativeReference, dataset), "utf8").split("\n");
    assert.equal(got.length, want.length, dataset);
    got.forEach((line, i) => {
      if (dataset === "SimpleSafetyTests" && i === 2) {
        const rec = JSON.parse(line);
        const ref = JSON.parse(want[i]);
        assert.deepEqual([rec.prompt, rec.label, rec.predict], [ref.prompt, ref.label, ""], "a failed item keeps its place");
        assert.match(rec.failed, /^no answer within 25 s \(--item-timeout\) \(2 attempts\)$/);
      } else assert.equal(line, want[i], `${dataset} line ${i + 1}: as an uninterrupted run`);
    });
  }
  assert.match(r.stderr, /SimpleSafetyTests item 3 of .*: failed, written as such: no answer within 25 s/);
  assert.match(r.stdout, /failed items, not scored: SimpleSafetyTests 1 of 3/);
  const summary = JSON.parse(r.stdout.trim().split("\n").at(-1));
  assert.equal(summary.new_items, 2 * LIMIT - 1, "the failed item is not counted as a prediction");
  // A rerun resumes after the failed line: nothing left to do.
  const again = await evaluate(common(out, ["--backend", "webgpu", "--quant", "f32", "--max-new-tokens", String(NEW_TOKENS)]));
  assert.equal(again.code, 0, again.stderr);
  assert.equal(JSON.parse(again.stdout.trim().split("\n").at(-1)).new_items, 0);
});

test("soak: SIGKILL to the evaluator and its Chromium, or to Chromium alone, at 10 random moments; the files equal an uninterrupted run's", async () => {
  // ~0.35 s an item on the wasm CPU path (f32 weights, two threads): 24 short prompts make a run
  // of ~10 s to kill within.
  const datasets = ["SimpleSafetyTests"];
  const limit = 24;
  const newTokens = 300;
  const reference = path.join(tmp, "soak-native");
  const n = spawnSync(native, ["predict", "--model", model, "--quiet", "--benchmark-dir", benchmarkDir, "--datasets", datasets.join(","), "--limit", String(limit), "--max-new-tokens", String(newTokens), "--quant", "none", "--out", reference], { encoding: "utf8" });
  assert.equal(n.status, 0, n.stderr);
  const out = path.join(tmp, "soak");
  // One profile for every run, as a user's reruns would have. (--datasets, --limit and
  // --max-new-tokens are given twice: the last ones count.)
  const args = [path.join(repo, "evaluator/evaluate.mjs"), "--profile", path.join(tmp, "profile-soak"), ...cpuRun(out, ["--datasets", datasets.join(","), "--limit", String(limit), "--max-new-tokens", String(newTokens), "--max-attempts", "20"])];
  let stderr = "";
  const spawnRun = () => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr.on("data", (d) => (stderr += d));
    child.done = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
    return child;
  };
  const written = () => datasets.reduce((sum, d) => sum + (fs.existsSync(predictionsFile(out, d)) ? fs.readFileSync(predictionsFile(out, d), "utf8").split("\n").length - 1 : 0), 0);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  let child = spawnRun();
  const moments = [];
  for (let i = 0; i < 10; i++) {
    const whole = i % 2 === 0;
    // The evaluator with its Chromium at any moment (start-up included); Chromium alone just after
    // an item was written, so the evaluator meets a crash in the middle of its run.
    const before = written();
    const deadline = Date.now() + 30_000;
    if (!whole) while (written() === before && Date.now() < deadline && child.exitCode === null) await sleep(20);
    const delay = whole ? 1000 + Math.floor(Math.random() * 7000) : Math.floor(Math.random() * 800);
    const exited = await Promise.race([child.done.then(() => true), sleep(delay).then(() => false)]);
    if (exited) child = spawnRun(); // finished or failed early: the kills go on over a rerun
    moments.push(`${whole ? "evaluator and Chromium" : "Chromium"} after ${delay} ms with ${written()} lines`);
    const below = descendants(child.pid);
    if (whole) {
      killAll([child.pid, ...below]);
      await child.done;
      child = spawnRun();
    } else killAll(below);
  }
  const code = await child.done;
  const story = `kills: ${moments.join("; ")}`;
  assert.equal(code, 0, `the last run (${story}):\n${stderr.slice(-3000)}`);
  for (const dataset of datasets) {
    assert.equal(fs.readFileSync(predictionsFile(out, dataset), "utf8"), fs.readFileSync(predictionsFile(reference, dataset), "utf8"), `${dataset}: equals the uninterrupted run (${story})`);
  }
  assert.match(stderr, /(Chromium closed|the page crashed|the page closed \(did Chromium end\?\)|has been closed); restarting Chromium/, `the evaluator restarted a killed Chromium itself (${story})`);
});
