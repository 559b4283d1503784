#!/usr/bin/env node
// The headless-browser batch evaluator: serves the repository on 127.0.0.1, opens evaluator/page.html
// in headless Chromium (the same wasm module and Web Worker as the demo, on WebGPU when the
// browser has it), feeds it the paper's benchmark items and writes
// OUT/<Dataset>/generated_predictions.jsonl item by item (each line synced to disk, so a killed
// run loses nothing finished and a rerun resumes), then scores the run with the project's scorer.
// Run it through evaluator/evaluate.sh, which builds what it needs first. The steps: plan (items,
// resume points) -> load (the model, then run.json) -> run (items, lines synced) -> score.
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import cliProgress from "cli-progress";
import { startServer } from "../scripts/serve.mjs";
import { launchChromium } from "../scripts/browser.mjs";
import { BACKENDS, DEFAULTS, QUANTS } from "../www/protocol.js";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const PREDICTIONS_FILE = "generated_predictions.jsonl";
const MANIFEST_FILE = "run.json";
const SUMMARY_FILE = "summary.json";
const DEFAULT_MODEL = "yueliu1999/GuardReasoner-1B";
const PAGE = "/evaluator/page.html";
// URL prefix the local model file or folder is served under.
const LOCAL_MODEL_PREFIX = "/local-model/";
// Off a terminal, load progress is logged every tenth only for files bigger than this.
const LOG_TENTHS_ABOVE_BYTES = 64 * 2 ** 20;

const USAGE = `Usage: evaluator/evaluate.sh --benchmark-dir DIR --out DIR [options]

Runs GuardReasoner over the paper's benchmark files in headless Chromium, through the same wasm
module as the demo, writes OUT/<Dataset>/generated_predictions.jsonl (prompt, label, predict) item
by item, and prints the paper's tables and a JSON summary (also saved as OUT/summary.json).
A rerun with the same --out resumes after the last finished item.

Options:
  --benchmark-dir DIR   the paper's benchmark files (0_0_SimpleSafetyTests.json, ...)
  --out DIR             where predictions, run.json and summary.json go
  --model M             a Hugging Face repo id, a .gguf URL, an HF-style folder URL, or a local
                        .gguf file or HF-style folder (default ${DEFAULT_MODEL})
  --datasets A,B        dataset names as in the paper's tables (default: every file present)
  --limit N             only the first N items of each dataset
  --shard I/N           this machine's share of a split run (0-based, contiguous slices; the
                        shards' files concatenate in order to the unsplit run's), default 0/1
  --max-new-tokens N    most new tokens per item (default ${DEFAULTS.maxNewTokens}; --max-new also taken)
  --backend B           auto | webgpu | cpu (default ${DEFAULTS.backend}: WebGPU when the browser has it)
  --quant Q             float weights once loaded: q8 | q4 | none (default ${DEFAULTS.quant}; f32, q8_0,
                        q4_0 also taken)
  --context N           KV cache size in tokens, prompt + new (default ${DEFAULTS.context})
  --batch N             items decoded together (default ${DEFAULTS.batch} on WebGPU, 1 on the CPU);
                        any batch writes the same predictions; each item needs its own KV cache
  --profile DIR         browser profile; its OPFS keeps downloaded models between runs
                        (default .cache/browser-profile in the repository)
  -h, --help            this text`;

class UsageError extends Error {}

// Set by SIGINT/SIGTERM: the browser is being closed, so the run's pending calls fail; that is
// not an error to report.
let interrupted = false;

function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        "benchmark-dir": { type: "string" },
        out: { type: "string" },
        model: { type: "string", default: DEFAULT_MODEL },
        datasets: { type: "string" },
        limit: { type: "string" },
        shard: { type: "string", default: "0/1" },
        "max-new-tokens": { type: "string" },
        "max-new": { type: "string" },
        backend: { type: "string", default: DEFAULTS.backend },
        quant: { type: "string", default: DEFAULTS.quant },
        context: { type: "string", default: String(DEFAULTS.context) },
        batch: { type: "string" },
        profile: { type: "string", default: path.join(REPO, ".cache/browser-profile") },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    throw new UsageError(e.message);
  }
  if (values.help) return null;
  values["max-new-tokens"] ??= values["max-new"] ?? String(DEFAULTS.maxNewTokens);
  // The upper bound keeps numbers within what the wasm side takes (u32) and what makes sense.
  const count = (name, min, max = 1e9) => {
    const text = values[name];
    if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`--${name} ${text}: expected a whole number from ${min} to ${max}`);
    return Number(text);
  };
  if (!values["benchmark-dir"]) throw new UsageError("--benchmark-dir is required");
  if (!values.out) throw new UsageError("--out is required");
  const shard = /^(\d+)\/(\d+)$/.exec(values.shard);
  if (!shard || Number(shard[2]) < 1 || Number(shard[1]) >= Number(shard[2]) || Number(shard[2]) > 1e6) throw new UsageError(`--shard ${values.shard}: expected I/N with 0 <= I < N, e.g. 0/2`);
  if (!BACKENDS.includes(values.backend)) throw new UsageError(`--backend ${values.backend}: expected auto, webgpu or cpu`);
  if (!QUANTS.includes(values.quant)) throw new UsageError(`--quant ${values.quant}: expected q8, q4 or none (or f32, q8_0, q4_0)`);
  return {
    benchmarkDir: path.resolve(values["benchmark-dir"]),
    out: path.resolve(values.out),
    model: values.model,
    datasets: values.datasets ? [...new Set(values.datasets.split(",").map((s) => s.trim()).filter((s) => s))] : null,
    limit: values.limit === undefined ? null : count("limit", 0),
    shard: { index: Number(shard[1]), count: Number(shard[2]), text: values.shard },
    maxNewTokens: count("max-new-tokens", 1),
    backend: values.backend,
    quant: values.quant,
    context: count("context", 1),
    batch: values.batch === undefined ? null : count("batch", 1, 128),
    profile: path.resolve(values.profile),
  };
}

/** The page's model source for --model, and what the server must mount for a local one. */
function modelSource(model) {
  if (/^https?:\/\//i.test(model)) return { source: { url: model }, mounts: {} };
  if (fs.existsSync(model)) {
    const abs = path.resolve(model);
    if (fs.statSync(abs).isDirectory()) return { source: { url: LOCAL_MODEL_PREFIX, cache: false }, mounts: { [LOCAL_MODEL_PREFIX]: abs } };
    // The server matches mounts against the decoded path; the page fetches the encoded URL.
    const name = path.basename(abs);
    return { source: { url: LOCAL_MODEL_PREFIX + encodeURIComponent(name), cache: false }, mounts: { [LOCAL_MODEL_PREFIX + name]: abs } };
  }
  if (/^[\w.-]+\/[\w.-]+$/.test(model)) return { source: { hf: model }, mounts: {} };
  throw new UsageError(`--model ${model}: no such file or folder, and not a URL or a Hugging Face repo id (owner/name)`);
}

/** Whether OUT already holds predictions: only then does its run.json bind a rerun (a run whose
 * model failed to load leaves nothing to protect). */
function holdsPredictions(out) {
  const size = (f) => fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0;
  return fs.existsSync(out) && fs.readdirSync(out).some((d) => size(path.join(out, d, PREDICTIONS_FILE)) > 0);
}

const isTTY = Boolean(process.stderr.isTTY);
const log = (line) => process.stderr.write(line + "\n");
const seconds = (s) => (s >= 90 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`);
const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** Model download and load progress: a bar on a terminal, a line per phase and tenth elsewhere. */
function loadProgress() {
  const bar = isTTY ? new cliProgress.SingleBar({ format: "{phase} {bar} {done}/{all} {file}", hideCursor: true, clearOnComplete: true }, cliProgress.Presets.shades_classic) : null;
  let shown = null;
  let lastTenth = -1;
  return {
    update(p) {
      const key = `${p.phase} ${p.file ?? ""}`;
      if (bar) {
        if (shown !== key) bar.stop(), bar.start(p.total || 1, 0, { phase: p.phase.padEnd(8), file: p.file ?? "", done: "", all: "" });
        bar.update(p.loaded, { done: mib(p.loaded), all: mib(p.total || 0) });
      } else {
        // A line when a file starts, and every tenth of the big ones.
        const tenth = p.total > LOG_TENTHS_ABOVE_BYTES ? Math.floor((10 * p.loaded) / p.total) : 0;
        if (shown !== key) log(`${p.phase} ${p.file ?? "weights"} (${mib(p.total || 0)})`);
        else if (tenth > lastTenth) log(`${p.phase} ${p.file ?? "weights"}: ${mib(p.loaded)} of ${mib(p.total)}`);
        lastTenth = shown !== key ? tenth : Math.max(lastTenth, tenth);
      }
      shown = key;
    },
    stop() {
      bar?.stop();
    },
  };
}

/** One progress bar per dataset (items, tokens/s, ETA); plain lines when not on a terminal. */
function datasetProgress(multi, name, total, done) {
  const bar = multi?.create(total, done, { name: name.padEnd(22), tps: "-" });
  return {
    tokens(n) {
      bar?.update({ tps: n.toFixed(1) });
    },
    item(value, line) {
      bar?.update(value);
      if (!bar) log(`${name} ${line}`);
    },
  };
}

async function main() {
  let opts;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      log(`error: ${e.message}\n\n${USAGE}`);
      process.exit(2);
    }
    throw e;
  }
  if (!opts) return console.log(USAGE);
  const started = performance.now();
  if (!fs.existsSync(path.join(REPO, "pkg/guardreasoner_bg.wasm"))) throw new Error("pkg/ is not built: run scripts/build-wasm.sh (evaluator/evaluate.sh does it for you)");
  if (!fs.statSync(opts.benchmarkDir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`--benchmark-dir ${opts.benchmarkDir}: not a folder`);
  const model = modelSource(opts.model);

  const server = await startServer({ root: REPO, mounts: model.mounts });
  const browser = await launchChromium({ webgpu: opts.backend !== "cpu", profileDir: opts.profile }).catch((e) => {
    server.close();
    const missing = /doesn't exist|ENOENT|no such file/i.test(e.message);
    throw new Error(missing ? e.message : `${e.message} (is another run using the same --profile ${opts.profile}? give each its own)`);
  });
  const closeAll = async () => {
    await browser.close().catch(() => {});
    await server.close();
  };
  const onSignal = (signal) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`\ninterrupted (${signal}): finished items are in ${opts.out}; run the same command again to resume`);
    closeAll().finally(() => process.exit(signal === "SIGTERM" ? 143 : 130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => m.type() === "error" && pageErrors.push(m.text()));
    await page.goto(`${server.url}${PAGE}`);
    await page.waitForFunction(() => window.evaluatorReady === true, null, { timeout: 60_000 }).catch(() => {
      throw new Error(`the evaluator page did not start: ${pageErrors.join("; ") || "no message"}`);
    });

    const runs = await plan(page, opts);
    const loaded = await load(page, opts, model);
    await run(page, opts, runs, loaded.batch ?? 1);
    const { tables, summary } = await score(page, opts, runs, loaded, started);
    process.stdout.write(tables);
    fs.writeFileSync(path.join(opts.out, SUMMARY_FILE), JSON.stringify(summary, null, 2) + "\n");
    console.log(JSON.stringify(summary));
  } finally {
    if (!interrupted) await closeAll();
  }
}

/** Every dataset planned and its file checked before the model loads: bad input fails fast and
 * leaves what is on disk as it was. */
async function plan(page, opts) {
  const known = await page.evaluate(() => window.evaluator.datasets());
  const specs = (opts.datasets ?? known.map((d) => d.name)).map((name) => {
    const spec = known.find((d) => d.name === name);
    if (!spec) throw new UsageError(`unknown dataset ${name}; the paper's are ${known.map((d) => d.name).join(", ")}`);
    return spec;
  });
  const runs = [];
  for (const spec of specs) {
    const file = path.join(opts.benchmarkDir, `${spec.file}.json`);
    if (!fs.existsSync(file)) {
      if (!opts.datasets) continue; // by default: the datasets whose files are present
      throw new Error(`${spec.name}: its benchmark file ${file} does not exist`);
    }
    const text = fs.readFileSync(file, "utf8");
    const plan = await page.evaluate(([d, f, t, l, i, n]) => window.evaluator.plan(d, f, t, l, i, n), [spec.name, file, text, opts.limit ?? -1, opts.shard.index, opts.shard.count]);
    const out = path.join(opts.out, spec.name, PREDICTIONS_FILE);
    const existing = fs.existsSync(out) ? fs.readFileSync(out).toString("base64") : "";
    const resume = await page.evaluate(([f, e, p]) => window.evaluator.resume(f, e, p), [out, existing, plan.items]);
    runs.push({ spec, file, out, plan, resume });
  }
  if (runs.length === 0) throw new Error(`no benchmark files in ${opts.benchmarkDir}`);
  return runs;
}

/** The model loaded in the page's worker, then run.json: it binds OUT to the settings and the
 * model's identity (known once the model is open), so a rerun with others is refused before any
 * item runs. Resolves to what the summary says of the engine. */
async function load(page, opts, model) {
  const chromiumVersion = (await page.evaluate(() => navigator.userAgent)).match(/Chrome\/([\d.]+)/)?.[1] ?? "unknown";
  const adapter = opts.backend === "cpu" ? { available: false, description: "WebGPU off (--backend cpu)" } : await page.evaluate(() => window.evaluator.adapter());
  log(`browser: Chromium ${chromiumVersion}; WebGPU adapter: ${adapter.description}`);
  const progress = loadProgress();
  await page.exposeFunction("evaluatorProgress", (p) => progress.update(p));
  const loadStarted = performance.now();
  let loaded;
  try {
    loaded = await page.evaluate(([source, o]) => window.evaluator.load(source, o), [model.source, { backend: opts.backend, quant: opts.quant, context: opts.context, batch: opts.batch ?? undefined }]);
  } catch (e) {
    throw new Error(`cannot load the model ${opts.model}: ${cleanMessage(e)}`);
  } finally {
    progress.stop();
  }
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  log(`model: ${opts.model} on ${loaded.backend}${loaded.batch > 1 ? `, ${loaded.batch} items at a time` : ""} (loaded in ${seconds(loadSeconds)})${loaded.fallback ? `; ${loaded.fallback}` : ""}`);

  const manifestFile = path.join(opts.out, MANIFEST_FILE);
  const existing = holdsPredictions(opts.out) && fs.existsSync(manifestFile) ? fs.readFileSync(manifestFile, "utf8") : null;
  const settings = { model: opts.model, backend: opts.backend, quant: opts.quant, context: opts.context, max_new_tokens: opts.maxNewTokens };
  let manifest = existing;
  try {
    const made = await page.evaluate(([s, e, f]) => window.evaluator.manifest(s, e, f), [settings, existing, opts.out]);
    if (made) {
      fs.mkdirSync(opts.out, { recursive: true });
      fs.writeFileSync(manifestFile, made);
      manifest = made;
    }
  } catch (e) {
    throw new Error(cleanMessage(e));
  }
  const engine = { engine: "browser", browser: `Chromium ${chromiumVersion}`, adapter: adapter.description, backend: loaded.backend, fallback: loaded.fallback, batch: loaded.batch };
  return { engine, manifest, loadSeconds, batch: loaded.batch };
}

/** Every planned item not yet in its dataset's file, each line written and synced to disk as soon
 * as its item is done. */
async function run(page, opts, runs, batch) {
  let itemTokens = () => {};
  await page.exposeFunction("evaluatorTokens", (n) => itemTokens(n));
  const multi = isTTY ? new cliProgress.MultiBar({ format: "{name} {bar} {value}/{total} items | {tps} tokens/s | eta {eta_formatted}", hideCursor: true, clearOnComplete: false, etaBuffer: 20 }, cliProgress.Presets.shades_classic) : null;
  try {
    for (const run of runs) {
      const { spec, plan, resume, out } = run;
      const todo = plan.items.slice(resume.done);
      fs.mkdirSync(path.dirname(out), { recursive: true });
      if (resume.partial_bytes > 0) {
        log(`${spec.name}: dropping an unfinished last line (${resume.partial_bytes} bytes) of ${out}`);
        fs.truncateSync(out, resume.keep_bytes);
      }
      if (resume.done > 0) log(`${spec.name}: resuming after ${resume.done} of ${plan.items.length} items already in ${out}`);
      await page.evaluate(([n, i, t]) => window.evaluator.startDataset(n, i, t), [spec.name, plan.items.length, plan.total]);
      const bar = datasetProgress(multi, spec.name, plan.items.length, resume.done);
      const fd = fs.openSync(out, "a");
      const stats = { tokens: 0, written: 0 };
      const datasetStarted = performance.now();
      try {
        // Up to twice the batch of items in flight, so the worker always has the next one waiting
        // when a place frees up; lines are written in order as items finish (a finished item
        // waits for those before it).
        const finished = new Map();
        let nextToStart = 0;
        const inFlightMax = Math.max(1, 2 * batch);
        const runItem = async (k) => {
          const item = todo[k];
          try {
            finished.set(k, { r: await page.evaluate(([it, n]) => window.evaluator.classify(it, n), [item, opts.maxNewTokens]) });
          } catch (e) {
            finished.set(k, { error: new Error(`${spec.name} item ${item.index + 1} of ${path.basename(run.file)}: ${cleanMessage(e)}`) });
          }
        };
        const inFlight = new Map();
        const start = () => {
          while (nextToStart < todo.length && inFlight.size < inFlightMax) {
            const k = nextToStart++;
            inFlight.set(k, runItem(k).then(() => inFlight.delete(k)));
          }
        };
        itemTokens = (n) => bar.tokens((stats.tokens + n) / Math.max((performance.now() - datasetStarted) / 1000, 1e-9));
        start();
        while (stats.written < todo.length) {
          while (!finished.has(stats.written)) await Promise.race(inFlight.values());
          const { r, error } = finished.get(stats.written);
          finished.delete(stats.written);
          if (error) {
            await Promise.allSettled(inFlight.values());
            throw error;
          }
          fs.writeSync(fd, r.line);
          fs.fsyncSync(fd);
          stats.tokens += r.newTokens;
          stats.written += 1;
          start();
          const wall = (performance.now() - datasetStarted) / 1000;
          const tps = stats.tokens / Math.max(wall, 1e-9);
          const done = resume.done + stats.written;
          const eta = ((plan.items.length - done) * wall) / stats.written;
          bar.tokens(tps);
          bar.item(done, `${done}/${plan.items.length} items, ${r.newTokens} tokens in ${seconds(r.seconds)} (${tps.toFixed(1)} tokens/s so far), eta ${seconds(eta)}`);
        }
        await page.evaluate((w) => window.evaluator.setGenerationSeconds(w), (performance.now() - datasetStarted) / 1000);
      } finally {
        fs.closeSync(fd);
      }
    }
  } finally {
    multi?.stop();
  }
}

/** The paper's tables over every dataset's whole file, and the run's summary. */
async function score(page, opts, runs, loaded, started) {
  const predictions = runs.map((r) => ({ dataset: r.spec.name, source: r.out, text: fs.readFileSync(r.out, "utf8") }));
  const wildGuard = runs.find((r) => r.plan.benchmark_items)?.plan.benchmark_items ?? null;
  const { report, tables } = await page.evaluate(([p, w]) => window.evaluator.score(p, w), [predictions, wildGuard]);
  const wall = (performance.now() - started) / 1000;
  const summary = await page.evaluate(
    ([m, i, n, l, e, ls, w, r]) => window.evaluator.summary(m, i, n, l, e, ls, w, r),
    [loaded.manifest, opts.shard.index, opts.shard.count, opts.limit ?? -1, loaded.engine, loaded.loadSeconds, wall, report],
  );
  return { tables, summary };
}

/** Playwright wraps page errors ("page.evaluate: Error: ..."); keep the message a person needs. */
function cleanMessage(e) {
  return String(e?.message ?? e)
    .replace(/^page\.evaluate: /, "")
    .replace(/^Error: /, "")
    .split("\n")[0];
}

main().catch((e) => {
  if (interrupted) return; // the signal handler exits with 130 once the browser is closed
  log(`error: ${e instanceof UsageError ? e.message : cleanMessage(e)}`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
