// The headless-browser batch evaluator (evaluator/evaluate.mjs) end to end on the tiny golden model
// over two of the paper's datasets: the files' layout and prompts, `predict` equal to the native
// CLI's greedy output (`guardreasoner predict`), the printed tables, kill and resume, shards, and
// clear errors that leave finished results intact.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { repo } from "./harness.mjs";

const benchmarkDir = path.resolve(repo, process.env.GUARDREASONER_SHARED || "../shared", "guardreasoner/benchmark");
const model = path.join(repo, ".cache/tiny-rebuilt/llama32");
const native = path.join(repo, "target/release/guardreasoner");
const DATASETS = ["SimpleSafetyTests", "HarmBenchResponse"];
const BENCHMARK_FILES = { SimpleSafetyTests: "0_0_SimpleSafetyTests.json", HarmBenchResponse: "0_5_harmbench_response.json" };
const LIMIT = 3;
// Enough tokens that an item takes a moment on the wasm CPU path (the kill test needs that),
// few enough that the WebGPU run on SwiftShader stays short (about 20 s for all six items).
const NEW_TOKENS = 48;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gr-evaluate-"));

let runs = 0;
/** The evaluator's command line, with a browser profile of its own. */
const evaluatorArgs = (args) => [path.join(repo, "evaluator/evaluate.mjs"), "--profile", path.join(tmp, `profile-${runs++}`), ...args];

/** Run the evaluator to the end; resolves to {code, stdout, stderr}. */
function evaluate(args, { timeoutMs = 15 * 60_000 } = {}) {
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

const common = (out, extra = []) => ["--model", model, "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(LIMIT), "--out", out, ...extra];
const cpuRun = (out, extra = []) => common(out, ["--backend", "cpu", "--quant", "f32", "--max-new-tokens", String(NEW_TOKENS), ...extra]);
const predictionsFile = (dir, dataset) => path.join(dir, dataset, "generated_predictions.jsonl");
const records = (dir, dataset) => fs.readFileSync(predictionsFile(dir, dataset), "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));
const benchmark = (dataset) => JSON.parse(fs.readFileSync(path.join(benchmarkDir, BENCHMARK_FILES[dataset]), "utf8"));

/** The native CLI's predictions for the same items (same selection code, native engine). */
function nativePredictions(out, maxNewTokens) {
  const r = spawnSync(native, ["predict", "--model", model, "--quiet", "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(LIMIT), "--max-new-tokens", String(maxNewTokens), "--out", out], { encoding: "utf8" });
  assert.equal(r.status, 0, `native predict failed: ${r.stderr}`);
  return out;
}

let cpuBaseline; // an uninterrupted CPU run, shared by the tests below
let nativeReference; // the native CLI's predictions for the same items

before(async () => {
  for (const [what, file] of [["the tiny model (run cargo test first)", path.join(model, "model.safetensors")], ["www/pkg/ (run scripts/build-wasm.sh)", path.join(repo, "www/pkg/guardreasoner_bg.wasm")], ["the native CLI (cargo build --release)", native], ["the benchmark files", benchmarkDir]]) {
    assert.ok(fs.existsSync(file), `missing ${what}: ${file}`);
  }
  nativeReference = nativePredictions(path.join(tmp, "native"), NEW_TOKENS);
  cpuBaseline = path.join(tmp, "cpu-baseline");
  const r = await evaluate(cpuRun(cpuBaseline));
  assert.equal(r.code, 0, r.stderr);
});

test("WebGPU run: paper layout, prompts, predict equal to the native CLI, tables and summary", async () => {
  const out = path.join(tmp, "webgpu");
  const r = await evaluate(common(out, ["--backend", "webgpu", "--quant", "f32", "--max-new-tokens", String(NEW_TOKENS)]));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /WebGPU adapter: \S/, "names the adapter");
  assert.match(r.stderr, /on gpu \(/, "ran on WebGPU");
  for (const dataset of DATASETS) {
    const got = records(out, dataset);
    const items = benchmark(dataset).slice(0, LIMIT);
    assert.equal(got.length, LIMIT, `${dataset}: ${LIMIT} lines`);
    got.forEach((rec, i) => {
      assert.deepEqual(Object.keys(rec), ["prompt", "label", "predict"], "the paper's keys, in its order");
      assert.equal(rec.prompt, `${items[i].instruction}\n${items[i].input}`, `${dataset} item ${i + 1}: prompt`);
      assert.equal(rec.label, items[i].output, `${dataset} item ${i + 1}: label`);
    });
    assert.deepEqual(got.map((x) => x.predict), records(nativeReference, dataset).map((x) => x.predict), `${dataset}: predict equals the native CLI's greedy output`);
  }
  assert.match(r.stdout, /prompt harmfulness detection task/);
  assert.match(r.stdout, /response harmfulness detection task/);
  assert.match(r.stdout, /SimpleSafetyTests\s+WildGuardTest\s+Weighted Avg\./);
  const summary = JSON.parse(r.stdout.trim().split("\n").at(-1));
  assert.deepEqual(summary, JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")));
  assert.equal(summary.new_items, 2 * LIMIT);
  assert.ok(summary.tokens_generated > 0 && summary.tokens_per_s > 0 && summary.items_per_s > 0 && summary.wall_s > 0, JSON.stringify(summary));
  assert.ok(summary.adapter.length > 0);
  assert.deepEqual(summary.scores.datasets.map((d) => [d.name, d.items]), [["SimpleSafetyTests", LIMIT], ["HarmBenchResponse", LIMIT]], "in the paper's dataset order");
});

test("the CPU fallback writes what the native CLI writes, byte for byte", () => {
  for (const dataset of DATASETS) {
    assert.equal(fs.readFileSync(predictionsFile(cpuBaseline, dataset), "utf8"), fs.readFileSync(predictionsFile(nativeReference, dataset), "utf8"), dataset);
  }
  // Both engines bind their folders with one manifest: the same settings and model identity.
  const manifest = (dir) => JSON.parse(fs.readFileSync(path.join(dir, "run.json"), "utf8"));
  const { engine: browserEngine, ...browser } = manifest(cpuBaseline);
  const { engine: nativeEngine, ...native } = manifest(nativeReference);
  assert.deepEqual([browserEngine, nativeEngine], ["browser", "native"]);
  assert.deepEqual(browser, native, "run.json apart from the engine");
  // report.html: the same figures beside the paper's (the run's facts and speeds differ).
  const figures = (dir) =>
    fs
      .readFileSync(path.join(dir, "report.html"), "utf8")
      .replace(/<dl>.*?<\/dl>/s, "")
      .replace(/<h2>Speed<\/h2>.*$/s, "");
  assert.match(figures(cpuBaseline), /<tr><td>SimpleSafetyTests<\/td><td>[\d.]+<\/td><td>98\.99<\/td>/);
  assert.equal(figures(cpuBaseline), figures(nativeReference), "the report's figures");
  assert.match(native.model_identity.sha256, /^[0-9a-f]{64}$/);
});

test("a run killed after its first item resumes and ends with the same files", async () => {
  const out = path.join(tmp, "killed");
  const args = evaluatorArgs(cpuRun(out));
  const child = spawn(process.execPath, args, { stdio: "ignore", detached: true });
  const first = predictionsFile(out, DATASETS[0]);
  const lines = () => (fs.existsSync(first) ? fs.readFileSync(first, "utf8").split("\n").length - 1 : 0);
  const deadline = Date.now() + 5 * 60_000;
  while (lines() < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  process.kill(-child.pid, "SIGKILL"); // the evaluator, at once
  await new Promise((r) => child.on("exit", r));
  // Playwright starts Chromium in a process group of its own: end it too, by its profile.
  spawnSync("pkill", ["-KILL", "-f", args[2]]);
  const kept = fs.readFileSync(first, "utf8");
  const keptLines = kept.split("\n").length - 1;
  assert.ok(keptLines >= 1 && keptLines < LIMIT, `killed with ${keptLines} of ${LIMIT} items finished`);
  // A write cut off by the kill would leave half a line: make one, the rerun must drop it.
  const half = Buffer.from(fs.readFileSync(predictionsFile(cpuBaseline, DATASETS[0]), "utf8").split("\n")[keptLines]).subarray(0, 100);
  fs.appendFileSync(first, half);

  const r = await evaluate(cpuRun(out));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${DATASETS[0]}: dropping an unfinished last line \\(100 bytes\\)`));
  assert.match(r.stderr, new RegExp(`${DATASETS[0]}: resuming after ${keptLines} of ${LIMIT} items`));
  assert.ok(fs.readFileSync(first, "utf8").startsWith(kept), "finished items kept as they were");
  for (const dataset of DATASETS) {
    assert.equal(fs.readFileSync(predictionsFile(out, dataset), "utf8"), fs.readFileSync(predictionsFile(cpuBaseline, dataset), "utf8"), `${dataset}: equals the uninterrupted run`);
  }
  const summary = JSON.parse(r.stdout.trim().split("\n").at(-1));
  assert.equal(summary.new_items, 2 * LIMIT - keptLines, "finished items are not redone");

  // Run again: nothing left to do, nothing changes.
  const again = await evaluate(cpuRun(out));
  assert.equal(again.code, 0, again.stderr);
  assert.equal(JSON.parse(again.stdout.trim().split("\n").at(-1)).new_items, 0);
});

test("--shard 0/2 and 1/2 together cover every item exactly once, in order", async () => {
  const parts = [];
  for (const shard of ["0/2", "1/2"]) {
    const out = path.join(tmp, `shard-${shard.replace("/", "of")}`);
    const r = await evaluate(common(out, ["--backend", "cpu", "--quant", "f32", "--max-new-tokens", "2", "--shard", shard]));
    assert.equal(r.code, 0, r.stderr);
    parts.push(out);
  }
  for (const dataset of DATASETS) {
    const [a, b] = parts.map((dir) => records(dir, dataset));
    assert.ok(a.length > 0 && b.length > 0, `${dataset}: both shards have items (${a.length}, ${b.length})`);
    const prompts = [...a, ...b].map((x) => x.prompt);
    assert.deepEqual(prompts, records(cpuBaseline, dataset).map((x) => x.prompt), `${dataset}: the shards concatenate to the whole run`);
    assert.equal(new Set(prompts).size, LIMIT);
  }
});

test("bad input: a clear error, and results already written stay intact", async () => {
  const out = path.join(tmp, "errors");
  fs.cpSync(cpuBaseline, out, { recursive: true });
  const before = Object.fromEntries(DATASETS.map((d) => [d, fs.readFileSync(predictionsFile(out, d), "utf8")]));
  const unchanged = () => DATASETS.forEach((d) => assert.equal(fs.readFileSync(predictionsFile(out, d), "utf8"), before[d], `${d} untouched`));

  // A dataset whose benchmark file is missing.
  const partialBench = path.join(tmp, "bench-without-harmbench");
  fs.mkdirSync(partialBench);
  fs.copyFileSync(path.join(benchmarkDir, BENCHMARK_FILES.SimpleSafetyTests), path.join(partialBench, BENCHMARK_FILES.SimpleSafetyTests));
  let r = await evaluate(["--model", model, "--benchmark-dir", partialBench, "--datasets", DATASETS.join(","), "--limit", "5", "--out", out, "--backend", "cpu", "--quant", "f32", "--max-new-tokens", String(NEW_TOKENS)]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /HarmBenchResponse: its benchmark file .*0_5_harmbench_response\.json does not exist/);
  unchanged();

  // A malformed line in a benchmark file.
  const brokenBench = path.join(tmp, "bench-broken");
  fs.mkdirSync(brokenBench);
  fs.writeFileSync(path.join(brokenBench, BENCHMARK_FILES.SimpleSafetyTests), JSON.stringify([{ instruction: "x", output: "harmful" }]));
  r = await evaluate(["--model", model, "--benchmark-dir", brokenBench, "--datasets", "SimpleSafetyTests", "--out", path.join(tmp, "broken-out"), "--backend", "cpu"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /0_0_SimpleSafetyTests\.json: item 1: field `input` is missing/);

  // A malformed line in the predictions file being resumed.
  const file = predictionsFile(out, DATASETS[0]);
  const lines = before[DATASETS[0]].split("\n");
  const corrupt = [lines[0], "{not json", ...lines.slice(1)].join("\n");
  fs.writeFileSync(file, corrupt);
  r = await evaluate(cpuRun(out, ["--limit", "5"]));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /generated_predictions\.jsonl:2: invalid JSON/);
  assert.equal(fs.readFileSync(file, "utf8"), corrupt, "left as it was");
  fs.writeFileSync(file, before[DATASETS[0]]);

  // A model that fails to load (a truncated GGUF), and a URL that is not there.
  const truncated = path.join(tmp, "truncated.gguf");
  const smol = path.join(repo, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  const fd = fs.openSync(smol, "r");
  const head = Buffer.alloc(1 << 20);
  fs.readSync(fd, head, 0, head.length, 0);
  fs.closeSync(fd);
  fs.writeFileSync(truncated, head);
  const loadFails = async (modelArg) => {
    const dir = path.join(tmp, `load-${path.basename(modelArg).replace(/\W/g, "")}`);
    fs.cpSync(cpuBaseline, dir, { recursive: true });
    fs.rmSync(path.join(dir, "run.json")); // a different model: a run folder of its own
    const kept = fs.readFileSync(predictionsFile(dir, DATASETS[0]), "utf8");
    const res = await evaluate(["--model", modelArg, "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", "5", "--out", dir, "--backend", "cpu", "--max-new-tokens", "2"]);
    assert.equal(res.code, 1, res.stderr);
    assert.equal(fs.readFileSync(predictionsFile(dir, DATASETS[0]), "utf8"), kept, "results kept");
    return res.stderr;
  };
  assert.match(await loadFails(truncated), /error: cannot load the model .*truncated\.gguf: .*(truncated|past the end|remaining)/i);
  assert.match(await loadFails("http://127.0.0.1:9/missing.gguf"), /error: cannot load the model http:\/\/127\.0\.0\.1:9\/missing\.gguf: /);

  // Other settings than the folder's run, and bad options.
  r = await evaluate(cpuRun(out, ["--max-new-tokens", "7"]));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /holds a run with max_new_tokens = 48, this one has 7/);
  r = await evaluate(cpuRun(out, ["--shard", "2/2"]));
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--shard 2\/2: expected I\/N/);
  r = await evaluate(cpuRun(out, ["--datasets", "NoSuchSet"]));
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown dataset NoSuchSet; the paper's are SimpleSafetyTests, /);
  unchanged();
});

test("WildGuardTest takes its labels from the benchmark items the shard covers", async () => {
  // No WildGuardTest file ships here: make one from SimpleSafetyTests items with the label fields
  // the paper's file has. Shard 1/2 of 4 items covers items 3 and 4.
  const dir = path.join(tmp, "bench-wildguard");
  fs.mkdirSync(dir);
  const items = benchmark("SimpleSafetyTests").slice(0, 4).map((item, i) => ({
    ...item,
    prompt_harm_label: i % 2 ? "harmful" : "unharmful",
    response_harm_label: "unharmful",
    response_refusal_label: i === 2 ? null : "refusal",
  }));
  fs.writeFileSync(path.join(dir, "0_4_wild_guard_test.json"), JSON.stringify(items));
  const out = path.join(tmp, "wildguard");
  const r = await evaluate(["--model", model, "--benchmark-dir", dir, "--shard", "1/2", "--out", out, "--backend", "cpu", "--max-new-tokens", "2"]);
  assert.equal(r.code, 0, r.stderr);
  const scores = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")).scores.datasets[0];
  assert.equal(scores.name, "WildGuardTest");
  const task = (name) => scores.scores.find((s) => s.task === name);
  // The tiny model's noise never answers: item 3 (unharmful) counts twice, item 4 (harmful) drops.
  assert.deepEqual([task("prompt_harmfulness").counted_pairs, task("prompt_harmfulness").dropped_items], [2, 1]);
  // Item 3's refusal label is null (skipped); item 4's is "refusal", counted twice.
  assert.deepEqual([task("refusal").null_labels, task("refusal").counted_pairs], [1, 2]);
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
  const r = spawnSync(native, ["predict", "--quiet", "--model", model, "--benchmark-dir", benchmarkDir, "--datasets", "SimpleSafetyTests,ToxicChat", "--limit", "12", "--max-new-tokens", "16", "--batch", "1", "--out", nativeOut], { encoding: "utf8" });
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
  const limit = 4; // HarmBenchResponse's 5th prompt is longer than the tiny model's context
  const newTokens = 300; // ~0.8 s an item on the wasm CPU path: a run of ~10 s to kill within
  const reference = path.join(tmp, "soak-native");
  const n = spawnSync(native, ["predict", "--model", model, "--quiet", "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(limit), "--max-new-tokens", String(newTokens), "--out", reference], { encoding: "utf8" });
  assert.equal(n.status, 0, n.stderr);
  const out = path.join(tmp, "soak");
  // One profile for every run, as a user's reruns would have. (--limit and --max-new-tokens are
  // given twice: the last ones count.)
  const args = [path.join(repo, "evaluator/evaluate.mjs"), "--profile", path.join(tmp, "profile-soak"), ...cpuRun(out, ["--limit", String(limit), "--max-new-tokens", String(newTokens), "--max-attempts", "20"])];
  let stderr = "";
  const spawnRun = () => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr.on("data", (d) => (stderr += d));
    child.done = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
    return child;
  };
  const written = () => DATASETS.reduce((sum, d) => sum + (fs.existsSync(predictionsFile(out, d)) ? fs.readFileSync(predictionsFile(out, d), "utf8").split("\n").length - 1 : 0), 0);
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
  for (const dataset of DATASETS) {
    assert.equal(fs.readFileSync(predictionsFile(out, dataset), "utf8"), fs.readFileSync(predictionsFile(reference, dataset), "utf8"), `${dataset}: equals the uninterrupted run (${story})`);
  }
  assert.match(stderr, /(Chromium closed|the page crashed|the page closed \(did Chromium end\?\)|has been closed); restarting Chromium/, `the evaluator restarted a killed Chromium itself (${story})`);
});
