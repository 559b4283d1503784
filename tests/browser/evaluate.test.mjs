// The headless-browser batch evaluator (evaluator/evaluate.mjs) end to end on the tiny golden model
// over two of the paper's datasets: the files' layout and prompts, `predict` equal to the native
// CLI's greedy output (`guardreasoner predict`), the printed tables, kill and resume, shards, and
// clear errors that leave finished results intact. The long runs (--batch on both backends,
// faults, soak) are in the full tier: tests/browser/full/evaluate-long.test.mjs.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { benchmarkDir, model, DATASETS, BENCHMARK_FILES, LIMIT, NEW_TOKENS, tmp, evaluatorArgs, evaluate, common, cpuRun, predictionsFile, records, benchmark, assertPrerequisites, nativePredictions } from "./evaluator-fixture.mjs";
import { repo } from "./harness.mjs";

let cpuBaseline; // an uninterrupted CPU run, shared by the tests below
let nativeReference; // the native CLI's predictions for the same items

before(async () => {
  assertPrerequisites();
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
  // The cut item's scores line may have been written before its prediction: the rerun drops it.
  fs.appendFileSync(path.join(out, DATASETS[0], "scores.jsonl"), `{"line":${keptLines + 1},"request":0.5,"completion":null,"response":null}\n`);

  const r = await evaluate(cpuRun(out));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${DATASETS[0]}: dropping an unfinished last line \\(100 bytes\\)`));
  assert.match(r.stderr, new RegExp(`${DATASETS[0]}: resuming after ${keptLines} of ${LIMIT} items`));
  assert.ok(fs.readFileSync(first, "utf8").startsWith(kept), "finished items kept as they were");
  for (const dataset of DATASETS) {
    assert.equal(fs.readFileSync(predictionsFile(out, dataset), "utf8"), fs.readFileSync(predictionsFile(cpuBaseline, dataset), "utf8"), `${dataset}: equals the uninterrupted run`);
    const scores = (dir) => fs.readFileSync(path.join(dir, dataset, "scores.jsonl"), "utf8");
    assert.equal(scores(out), scores(cpuBaseline), `${dataset}: scores.jsonl equals the uninterrupted run's`);
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


test("scores.jsonl beside each predictions file, as the native CLI writes it; --verdict-first runs as `predict --verdict-first` and binds its folder", async () => {
  for (const dataset of DATASETS) {
    const scores = (dir) => fs.readFileSync(path.join(dir, dataset, "scores.jsonl"), "utf8");
    assert.equal(scores(cpuBaseline), scores(nativeReference), `${dataset}: scores.jsonl`);
    assert.deepEqual(scores(cpuBaseline).trim().split("\n").map((l) => JSON.parse(l).line), [1, 2, 3], "a line per prediction");
  }
  const out = path.join(tmp, "verdict-first");
  const r = await evaluate(cpuRun(out, ["--verdict-first"]));
  assert.equal(r.code, 0, r.stderr);
  const native = path.join(tmp, "native-verdict-first");
  const n = spawnSync(path.join(repo, "target/release/guardreasoner"), ["predict", "--model", model, "--quiet", "--benchmark-dir", benchmarkDir, "--datasets", DATASETS.join(","), "--limit", String(LIMIT), "--max-new-tokens", String(NEW_TOKENS), "--quant", "none", "--verdict-first", "--out", native], { encoding: "utf8" });
  assert.equal(n.status, 0, n.stderr);
  for (const dataset of DATASETS) {
    assert.equal(fs.readFileSync(predictionsFile(out, dataset), "utf8"), fs.readFileSync(predictionsFile(native, dataset), "utf8"), dataset);
    for (const rec of records(out, dataset)) assert.ok(rec.predict.startsWith("---\n\nAnswers: \nRequest:"), rec.predict);
  }
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, "run.json"), "utf8")).verdict_first, true);
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")).mode, "verdict-first");
  const again = await evaluate(cpuRun(out));
  assert.equal(again.code, 1);
  assert.match(again.stderr, /holds a run with verdict_first = true, this one has false/);
});
