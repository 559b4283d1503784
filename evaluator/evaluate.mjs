#!/usr/bin/env node
// The headless-browser batch evaluator: serves the repository on 127.0.0.1, opens evaluator/page.html
// in headless Chromium (the same wasm module and Web Worker as the demo, on WebGPU on a real GPU,
// else on the wasm CPU path), feeds it the paper's benchmark items and writes
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
import { BACKENDS, DEFAULTS, GPU_LOST_PREFIX, QUANTS } from "../www/protocol.js";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const PREDICTIONS_FILE = "generated_predictions.jsonl";
// Beside it, each item's verdict scores (the core's SCORES_FILE).
const SCORES_FILE = "scores.jsonl";
const MANIFEST_FILE = "run.json";
const SUMMARY_FILE = "summary.json";
const REPORT_FILE = "report.html"; // Rust guard::REPORT_FILE
const DEFAULT_MODEL = "yueliu1999/GuardReasoner-1B";
const PAGE = "/evaluator/page.html";
// URL prefix the local model file or folder is served under.
const LOCAL_MODEL_PREFIX = "/local-model/";
// Off a terminal, load progress is logged every tenth only for files bigger than this.
const LOG_TENTHS_ABOVE_BYTES = 64 * 2 ** 20;
// Tries of an item before it is written as failed (--max-attempts).
const DEFAULT_MAX_ATTEMPTS = 3;
// The automatic --item-timeout: TIMEOUT_FACTOR times the longest answer (--max-new-tokens) at the
// slowest rate seen so far (wall time from hand-off, queueing and prefill included, per new
// token), at least MIN_ITEM_TIMEOUT_S; FIRST_ITEM_TIMEOUT_S until an item has finished.
const TIMEOUT_FACTOR = 10;
const MIN_ITEM_TIMEOUT_S = 60;
const FIRST_ITEM_TIMEOUT_S = 3600;
// A browser that does not close within this is killed.
const CLOSE_TIMEOUT_MS = 15_000;
// Test hook: faults to inject, as JSON {"<Dataset>:<0-based benchmark index>": kind}; kind is
// "hang" (the page's main thread stops), "crash" (the renderer crashes), "lose-gpu" (the GPU
// device is destroyed), each when the item is first handed to a page, or with "-always" every time.
const FAULTS_ENV = "GUARDREASONER_EVALUATOR_FAULTS";

const USAGE = `Usage: evaluator/evaluate.sh --benchmark-dir DIR --out DIR [options]

Runs GuardReasoner over the paper's benchmark files in headless Chromium, through the same wasm
module as the demo, writes OUT/<Dataset>/generated_predictions.jsonl (prompt, label, predict) item
by item, and prints the paper's tables and a JSON summary (also saved as OUT/summary.json).
A rerun with the same --out resumes after the last finished item.

Options:
  --benchmark-dir DIR   the paper's benchmark files (0_0_SimpleSafetyTests.json, ...)
  --out DIR             where predictions, run.json, summary.json and report.html go
  --model M             a Hugging Face repo id, a .gguf URL, an HF-style folder URL, or a local
                        .gguf file or HF-style folder (default ${DEFAULT_MODEL})
  --datasets A,B        dataset names as in the paper's tables (default: every file present)
  --limit N             only the first N items of each dataset
  --shard I/N           this machine's share of a split run (0-based, contiguous slices; the
                        shards' files concatenate in order to the unsplit run's), default 0/1
  --max-new-tokens N    most new tokens per item (default ${DEFAULTS.maxNewTokens}; --max-new also taken)
  --verdict-first       give the model the answer section's opening after each prompt, so it
                        writes its verdicts at once, without reasoning (about a dozen tokens);
                        compare with a reasoning run's F1 to measure what this costs
  --backend B           auto | webgpu | cpu (default ${DEFAULTS.backend}: WebGPU on a real GPU, else the CPU)
  --quant Q             float weights once loaded: q8 | q4 | none (default ${DEFAULTS.quant}; f32, q8_0,
                        q4_0 also taken)
  --context N           KV cache size in tokens, prompt + new (default ${DEFAULTS.context})
  --batch N             items decoded together (default ${DEFAULTS.batch} on WebGPU, 1 on the CPU);
                        any batch writes the same predictions; each item needs its own KV cache
  --profile DIR         browser profile; its OPFS keeps downloaded models between runs
                        (default .cache/browser-profile in the repository)
  --item-timeout S      seconds an item may take from when it is handed to the browser, after
                        which the page counts as hung (default: ${TIMEOUT_FACTOR}x the longest answer at the
                        slowest rate seen so far, at least ${MIN_ITEM_TIMEOUT_S} s; ${FIRST_ITEM_TIMEOUT_S} s until an item has finished)
  --max-attempts N      tries per item (default ${DEFAULT_MAX_ATTEMPTS}). A crash, a hung page or a lost GPU
                        restarts Chromium, and the items it held run again, one at a time; an item
                        that fails N times is written as a failed line ("failed": why), never scored,
                        and the run goes on
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
        "verdict-first": { type: "boolean", default: false },
        backend: { type: "string", default: DEFAULTS.backend },
        quant: { type: "string", default: DEFAULTS.quant },
        context: { type: "string", default: String(DEFAULTS.context) },
        batch: { type: "string" },
        profile: { type: "string", default: path.join(REPO, ".cache/browser-profile") },
        "item-timeout": { type: "string" },
        "max-attempts": { type: "string", default: String(DEFAULT_MAX_ATTEMPTS) },
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
    mode: values["verdict-first"] ? "verdict-first" : "reasoning",
    backend: values.backend,
    quant: values.quant,
    context: count("context", 1),
    batch: values.batch === undefined ? null : count("batch", 1, 128),
    profile: path.resolve(values.profile),
    itemTimeout: values["item-timeout"] === undefined ? null : count("item-timeout", 1),
    maxAttempts: count("max-attempts", 1, 100),
    faults: testFaults(),
  };
}

/** The faults the test hook asks for (FAULTS_ENV), by "<Dataset>:<index>". */
function testFaults() {
  const text = process.env[FAULTS_ENV];
  if (!text) return new Map();
  const kinds = ["hang", "crash", "lose-gpu"];
  const faults = new Map(Object.entries(JSON.parse(text)));
  for (const [key, kind] of faults) {
    if (!kinds.includes(kind.replace(/-always$/, ""))) throw new UsageError(`${FAULTS_ENV}: ${key}: unknown fault ${kind}`);
  }
  return faults;
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
  // Dataset folders only: OUT also holds run.json and summary.json.
  return fs.existsSync(out) && fs.readdirSync(out, { withFileTypes: true }).some((d) => d.isDirectory() && size(path.join(out, d.name, PREDICTIONS_FILE)) > 0);
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
  if (!fs.existsSync(path.join(REPO, "www/pkg/guardreasoner_bg.wasm"))) throw new Error("www/pkg/ is not built: run scripts/build-wasm.sh (evaluator/evaluate.sh does it for you)");
  if (!fs.statSync(opts.benchmarkDir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`--benchmark-dir ${opts.benchmarkDir}: not a folder`);
  const model = modelSource(opts.model);

  const server = await startServer({ root: REPO, mounts: model.mounts });
  // What the page reports, routed to whatever is listening now (a restarted page keeps them).
  const handlers = { progress: () => {}, tokens: () => {} };
  let tab = null;
  const closeAll = async () => {
    if (tab) await closeTab(tab);
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
  // A phase run again on a new browser when Chromium or its page is lost during it (a crash, a
  // kill), up to --max-attempts times.
  const resilient = async (what, phase) => {
    for (let attempt = 1; ; attempt++) {
      try {
        tab ??= await openTab(opts, server, handlers);
        return await phase(tab);
      } catch (e) {
        if (interrupted || !browserLost(e) || attempt >= opts.maxAttempts) throw e;
        log(`Chromium was lost ${what} (${cleanMessage(e)}); restarting it`);
        if (tab) await closeTab(tab);
        tab = null;
      }
    }
  };
  try {
    const { runs, loaded } = await resilient("while starting", async (t) => ({ runs: await plan(t.page, opts), loaded: await load(t.page, opts, model, handlers) }));
    // A new browser with the same model, after a crash, a hang or a lost GPU.
    const reopen = async () => {
      if (tab) await closeTab(tab);
      tab = null;
      await resilient("while restarting", async (t) => {
        const again = await loadModel(t.page, opts, model, handlers, { quiet: true });
        if (again.modelIdentity?.sha256 !== loaded.identity?.sha256) throw new Error(`the model ${opts.model} changed during the run; run again to resume`);
      });
    };
    const datasets = await run(() => tab, reopen, handlers, opts, runs, loaded.batch ?? 1);
    const { tables, summary } = await resilient("while scoring", (t) => score(t.page, opts, runs, datasets, loaded, started));
    process.stdout.write(tables);
    const summaryText = JSON.stringify(summary, null, 2) + "\n";
    fs.writeFileSync(path.join(opts.out, SUMMARY_FILE), summaryText);
    const report = await resilient("while writing the report", (t) => t.page.evaluate((s) => window.evaluator.report(s), summaryText));
    fs.writeFileSync(path.join(opts.out, REPORT_FILE), report);
    log(`report: ${path.join(opts.out, REPORT_FILE)}`);
    console.log(JSON.stringify(summary));
  } finally {
    if (!interrupted) await closeAll();
  }
}

// What Playwright says when the browser or the page is gone.
const BROWSER_LOST = /Target crashed|has been closed|Target closed|Browser closed|browser has disconnected|page crashed/i;
const browserLost = (e) => BROWSER_LOST.test(String(e?.message ?? e));

/** Headless Chromium with the evaluator page open and ready; `tab.gone` says why once the page
 * or the browser is lost (a crash, a close). */
async function openTab(opts, server, handlers) {
  const browser = await launchChromium({ webgpu: opts.backend !== "cpu", profileDir: opts.profile }).catch((e) => {
    const missing = /doesn't exist|ENOENT|no such file/i.test(e.message);
    throw new Error(missing ? e.message : `${e.message} (is another run using the same --profile ${opts.profile}? give each its own)`);
  });
  const tab = { browser, page: null, gone: null };
  const lose = (why) => (tab.gone ??= why);
  browser.on("close", () => lose("Chromium closed"));
  try {
    const page = await browser.newPage();
    tab.page = page;
    page.on("crash", () => lose("the page crashed"));
    page.on("close", () => lose("the page closed (did Chromium end?)"));
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => m.type() === "error" && pageErrors.push(m.text()));
    await page.exposeFunction("evaluatorProgress", (p) => handlers.progress(p));
    await page.exposeFunction("evaluatorTokens", (n) => handlers.tokens(n));
    await page.goto(`${server.url}${PAGE}`);
    await page.waitForFunction(() => window.evaluatorReady === true, null, { timeout: 60_000 }).catch((e) => {
      throw new Error(`the evaluator page did not start: ${pageErrors.join("; ") || cleanMessage(e)}`);
    });
  } catch (e) {
    await closeTab(tab);
    throw e;
  }
  return tab;
}

/** Closes the browser; one that does not close in time (a hung renderer) is killed. */
async function closeTab(tab) {
  tab.gone ??= "closed by the evaluator";
  let timer;
  const closed = await Promise.race([
    tab.browser.close().then(
      () => true,
      () => true,
    ),
    new Promise((resolve) => (timer = setTimeout(() => resolve(false), CLOSE_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (!closed) killDescendants(process.pid);
}

/** SIGKILL to every process below `pid` (Linux /proc): a browser that would not close. */
function killDescendants(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync("/proc", { withFileTypes: true })) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
      const stat = fs.readFileSync(`/proc/${entry.name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry.name)]);
    } catch {
      // gone meanwhile
    }
  }
  const below = (p) => (children.get(p) ?? []).flatMap((c) => [c, ...below(c)]);
  for (const p of below(pid)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone meanwhile
    }
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

/** The model loaded in the page's worker. Resolves to what the page says of it and the seconds
 * it took. */
async function loadModel(page, opts, model, handlers, { quiet = false } = {}) {
  const progress = quiet ? null : loadProgress();
  handlers.progress = (p) => progress?.update(p);
  const loadStarted = performance.now();
  try {
    const loaded = await page.evaluate(([source, o]) => window.evaluator.load(source, o), [model.source, { backend: opts.backend, quant: opts.quant, context: opts.context, batch: opts.batch ?? undefined }]);
    return { ...loaded, loadSeconds: (performance.now() - loadStarted) / 1000 };
  } catch (e) {
    throw new Error(`cannot load the model ${opts.model}: ${cleanMessage(e)}`);
  } finally {
    progress?.stop();
    handlers.progress = () => {};
  }
}

/** The model loaded, then run.json: it binds OUT to the settings and the model's identity (known
 * once the model is open), so a rerun with others is refused before any item runs. Resolves to
 * what the summary says of the engine. */
async function load(page, opts, model, handlers) {
  const chromiumVersion = (await page.evaluate(() => navigator.userAgent)).match(/Chrome\/([\d.]+)/)?.[1] ?? "unknown";
  const adapter = opts.backend === "cpu" ? { available: false, description: "WebGPU off (--backend cpu)" } : await page.evaluate(() => window.evaluator.adapter());
  log(`browser: Chromium ${chromiumVersion}; WebGPU adapter: ${adapter.description}`);
  const loaded = await loadModel(page, opts, model, handlers);
  const loadSeconds = loaded.loadSeconds;
  log(`model: ${opts.model} on ${loaded.backend}${loaded.batch > 1 ? `, ${loaded.batch} items at a time` : ""} (loaded in ${seconds(loadSeconds)})${loaded.fallback ? `; ${loaded.fallback}` : ""}`);

  const manifestFile = path.join(opts.out, MANIFEST_FILE);
  const existing = holdsPredictions(opts.out) && fs.existsSync(manifestFile) ? fs.readFileSync(manifestFile, "utf8") : null;
  const settings = { model: opts.model, backend: opts.backend, quant: opts.quant, context: opts.context, max_new_tokens: opts.maxNewTokens, verdict_first: opts.mode === "verdict-first" };
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
  return { engine, manifest, loadSeconds, batch: loaded.batch, identity: loaded.modelIdentity };
}

/** The --item-timeout in force: fixed, or from the slowest rate seen so far. */
function itemTimeout(opts) {
  let secondsPerToken = null;
  return {
    seconds: () => opts.itemTimeout ?? (secondsPerToken === null ? FIRST_ITEM_TIMEOUT_S : Math.max(MIN_ITEM_TIMEOUT_S, TIMEOUT_FACTOR * opts.maxNewTokens * secondsPerToken)),
    /** An item done `wall` seconds after its hand-off, with `newTokens` new tokens. */
    observe(wall, newTokens) {
      secondsPerToken = Math.max(secondsPerToken ?? 0, wall / Math.max(newTokens, 1));
    },
  };
}

/** Whether a failure means the browser must start again (rather than the item being at fault). */
function needsRestart(tab, message) {
  return tab.gone !== null || message.startsWith(GPU_LOST_PREFIX) || browserLost(message);
}

/** The test hook's fault for an item's attempt, if any (FAULTS_ENV). */
async function injectFault(tab, opts, key, attempt) {
  const kind = opts.faults.get(key);
  if (!kind || (attempt > 0 && !kind.endsWith("-always"))) return;
  const page = tab.page;
  const fault = kind.replace(/-always$/, "");
  if (fault === "hang") await page.evaluate(() => void setTimeout(() => { for (;;); }));
  else if (fault === "crash") await (await tab.browser.newCDPSession(page)).send("Page.crash").catch(() => {});
  else if (fault === "lose-gpu") await page.evaluate(() => window.evaluator.loseGpu());
}

/** Every planned item not yet in its dataset's file, each line written and synced to disk in
 * benchmark order as soon as its item and those before it are done. Resolves to each dataset's
 * counts for the summary. */
async function run(currentTab, reopen, handlers, opts, runs, batch) {
  const multi = isTTY ? new cliProgress.MultiBar({ format: "{name} {bar} {value}/{total} items | {tps} tokens/s | eta {eta_formatted}", hideCursor: true, clearOnComplete: false, etaBuffer: 20 }, cliProgress.Presets.shades_classic) : null;
  const say = (line) => (multi ? multi.log(line + "\n") : log(line));
  const timeout = itemTimeout(opts);
  const datasets = [];
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
      const bar = datasetProgress(multi, spec.name, plan.items.length, resume.done);
      // The scores file keeps the lines of the items kept, then takes each new item's line just
      // before its prediction's.
      const scoresFile = path.join(path.dirname(out), SCORES_FILE);
      const oldScores = fs.existsSync(scoresFile) ? fs.readFileSync(scoresFile, "utf8") : "";
      fs.writeFileSync(scoresFile, await currentTab().page.evaluate(([f, t, d]) => window.evaluator.keptScores(f, t, d), [scoresFile, oldScores, resume.done]));
      const scoresFd = fs.openSync(scoresFile, "a");
      const fd = fs.openSync(out, "a");
      const stats = { tokens: 0, written: 0 };
      const finishedCounts = [];
      const datasetStarted = performance.now();
      const itemName = (k) => `${spec.name} item ${todo[k].index + 1} of ${path.basename(run.file)}`;
      try {
        // Up to twice the batch of items in flight, so the worker always has the next one waiting
        // when a place frees up. An item that failed once is a suspect: it runs alone.
        const done = new Map(); // k -> {r} | {failed: why}
        const failures = new Map(); // k -> reasons, one per failed attempt
        const retry = new Set(); // suspects waiting to run again
        const inFlight = new Map(); // k -> its promise (resolves when its outcome is recorded)
        const inFlightMax = Math.max(1, 2 * batch);
        const handOffs = new Map(); // k -> times handed to a page (the test hook's faults fire on the first)
        let next = 0; // the first item never started
        let restartFor = null; // why the browser must start again
        let epoch = 0; // bumped at each restart: outcomes of an older browser are ignored
        const fail = (k, why) => {
          const reasons = [...(failures.get(k) ?? []), why];
          failures.set(k, reasons);
          if (reasons.length >= opts.maxAttempts) done.set(k, { failed: `${why} (${reasons.length} attempt${reasons.length > 1 ? "s" : ""})` });
          else retry.add(k);
        };
        const runItem = async (k, tab) => {
          const item = todo[k];
          const mine = epoch;
          const handedOff = performance.now();
          const limit = timeout.seconds();
          let timer;
          const timedOut = new Promise((resolve) => (timer = setTimeout(() => resolve({ timeout: true }), limit * 1000)));
          const classify = tab.page.evaluate(([it, n, m, l]) => window.evaluator.classify(it, n, m, l), [item, opts.maxNewTokens, opts.mode, resume.done + k + 1]).then(
            (r) => ({ r }),
            (e) => ({ error: cleanMessage(e) }),
          );
          // Not awaited: a fault may leave its own call unanswered (the item's timeout still runs).
          injectFault(tab, opts, `${spec.name}:${item.index}`, handOffs.get(k) ?? 0).catch(() => {});
          handOffs.set(k, (handOffs.get(k) ?? 0) + 1);
          const outcome = await Promise.race([classify, timedOut]);
          clearTimeout(timer);
          if (mine !== epoch) return; // this browser is gone; the item was counted at the restart
          if (outcome.r) {
            timeout.observe((performance.now() - handedOff) / 1000, outcome.r.newTokens);
            done.set(k, { r: outcome.r });
          } else if (outcome.timeout) {
            fail(k, `no answer within ${limit.toFixed(0)} s (--item-timeout)`);
            restartFor ??= `${itemName(k)} took longer than ${limit.toFixed(0)} s`;
          } else if (needsRestart(tab, outcome.error)) {
            const why = tab.gone ?? outcome.error;
            fail(k, why);
            restartFor ??= why;
          } else {
            fail(k, outcome.error);
          }
        };
        const start = () => {
          while (restartFor === null) {
            const candidate = retry.size > 0 ? Math.min(...retry) : next < todo.length ? next : null;
            if (candidate === null) return;
            if ([...inFlight.keys()].some((k) => failures.has(k))) return; // a suspect runs alone
            if (failures.has(candidate) ? inFlight.size > 0 : inFlight.size >= inFlightMax) return;
            if (retry.has(candidate)) retry.delete(candidate);
            else next += 1;
            const promise = runItem(candidate, currentTab()).finally(() => inFlight.get(candidate) === promise && inFlight.delete(candidate));
            inFlight.set(candidate, promise);
          }
        };
        const restart = async () => {
          const why = restartFor;
          epoch += 1;
          for (const k of inFlight.keys()) fail(k, `Chromium was restarted while it ran (${why})`);
          inFlight.clear();
          say(`${spec.name}: ${why}; restarting Chromium, then going on (items it held run again, one at a time)`);
          await reopen();
          restartFor = null;
        };
        handlers.tokens = (n) => bar.tokens((stats.tokens + n) / Math.max((performance.now() - datasetStarted) / 1000, 1e-9));
        start();
        while (stats.written < todo.length) {
          const k = stats.written;
          if (restartFor !== null) {
            await restart();
            start();
            continue;
          }
          if (!done.has(k)) {
            if (inFlight.size === 0) throw new Error(`internal error: ${itemName(k)} is neither done nor running`);
            await Promise.race(inFlight.values());
            start();
            continue;
          }
          const { r, failed } = done.get(k);
          done.delete(k);
          const item = todo[k];
          const line = r ? r.line : await currentTab().page.evaluate(([p, l, w]) => window.evaluator.failedLine(p, l, w), [item.prompt, item.label, failed]);
          if (r) fs.writeSync(scoresFd, r.scoresLine);
          fs.writeSync(fd, line);
          fs.fsyncSync(fd);
          stats.written += 1;
          const wall = (performance.now() - datasetStarted) / 1000;
          const doneCount = resume.done + stats.written;
          if (r) {
            stats.tokens += r.newTokens;
            finishedCounts.push(r.counts);
          } else {
            say(`${itemName(k)}: failed, written as such: ${failed}`);
          }
          const tps = stats.tokens / Math.max(wall, 1e-9);
          const eta = ((plan.items.length - doneCount) * wall) / stats.written;
          bar.tokens(tps);
          bar.item(doneCount, r ? `${doneCount}/${plan.items.length} items, ${r.newTokens} tokens in ${seconds(r.seconds)} (${tps.toFixed(1)} tokens/s so far), eta ${seconds(eta)}` : `${doneCount}/${plan.items.length} items (item ${item.index + 1} failed)`);
          start();
        }
      } finally {
        fs.closeSync(fd);
        fs.closeSync(scoresFd);
      }
      datasets.push({ name: spec.name, items: plan.items.length, benchmarkItems: plan.total, finished: finishedCounts, generationSeconds: (performance.now() - datasetStarted) / 1000 });
    }
  } finally {
    multi?.stop();
  }
  return datasets;
}

/** The paper's tables over every dataset's whole file, and the run's summary. */
async function score(page, opts, runs, datasets, loaded, started) {
  const scoresText = (r) => {
    const file = path.join(path.dirname(r.out), SCORES_FILE);
    return fs.existsSync(file) ? fs.readFileSync(file, "utf8") : undefined;
  };
  const predictions = runs.map((r) => ({ dataset: r.spec.name, source: r.out, text: fs.readFileSync(r.out, "utf8"), scores: scoresText(r) }));
  const wildGuard = runs.find((r) => r.plan.benchmark_items)?.plan.benchmark_items ?? null;
  const { report, tables } = await page.evaluate(([p, w]) => window.evaluator.score(p, w), [predictions, wildGuard]);
  const wall = (performance.now() - started) / 1000;
  const summary = await page.evaluate(
    ([d, m, i, n, l, e, ls, w, r]) => window.evaluator.summary(d, m, i, n, l, e, ls, w, r),
    [datasets, loaded.manifest, opts.shard.index, opts.shard.count, opts.limit ?? -1, loaded.engine, loaded.loadSeconds, wall, report],
  );
  return { tables, summary };
}

/** Playwright wraps page errors ("page.evaluate: Error: ..."); keep the message a person needs. */
function cleanMessage(e) {
  return String(e?.message ?? e)
    .replace(/^page\.evaluate: /, "")
    .replace(/^\w*Error: /, "")
    .split("\n")[0];
}

main().catch((e) => {
  if (interrupted) return; // the signal handler exits with 130 once the browser is closed
  log(`error: ${e instanceof UsageError ? e.message : cleanMessage(e)}`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
