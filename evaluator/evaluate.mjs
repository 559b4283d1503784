#!/usr/bin/env node
// The headless-browser batch evaluator: serves the repository on 127.0.0.1, opens evaluator/page.html
// in headless Chromium (the same wasm module and Web Worker as the demo, on WebGPU on a real GPU,
// else on the wasm CPU path), feeds it the paper's benchmark items and writes
// OUT/<Dataset>/generated_predictions.jsonl item by item (each line synced to disk, so a killed
// run loses nothing finished and a rerun resumes), then scores the run with the project's scorer.
// Run it through evaluator/evaluate.sh, which builds what it needs first. The steps: plan (items,
// resume points) -> load (the model, then run.json) -> run (items, lines synced) -> score. Beside
// it: options.mjs (the command line), chromium.mjs (the browser and its page), scheduler.mjs (which
// item runs when, restarts, failed items).
import fs from "node:fs";
import path from "node:path";
import cliProgress from "cli-progress";
import { startServer } from "../scripts/serve.mjs";
import { REPO, USAGE, UsageError, parseOptions, modelSource } from "./options.mjs";
import { openTab, closeTab, browserLost, needsRestart, injectFault, cleanMessage } from "./chromium.mjs";
import { itemTimeout, scheduleItems } from "./scheduler.mjs";

import { RUN_FILES } from "../www/protocol.js";

// Each dataset's predictions and, beside them, its verdict scores; the run's manifest, summary
// and report (the core's file names, www/protocol.js).
const { predictions: PREDICTIONS_FILE, scores: SCORES_FILE, manifest: MANIFEST_FILE, summary: SUMMARY_FILE, report: REPORT_FILE } = RUN_FILES;
// Off a terminal, load progress is logged every tenth only for files bigger than this.
const LOG_TENTHS_ABOVE_BYTES = 64 * 2 ** 20;

// Set by SIGINT/SIGTERM: the browser is being closed, so the run's pending calls fail; that is
// not an error to report.
let interrupted = false;

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

/** Every planned item not yet in its dataset's file, each line written and synced to disk in
 * benchmark order as soon as its item and those before it are done (in the order scheduler.mjs
 * decides). Resolves to each dataset's counts for the summary. */
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
      const stats = { tokens: 0 };
      const finishedCounts = [];
      const datasetStarted = performance.now();
      const itemName = (k) => `${spec.name} item ${todo[k].index + 1} of ${path.basename(run.file)}`;
      try {
        handlers.tokens = (n) => bar.tokens((stats.tokens + n) / Math.max((performance.now() - datasetStarted) / 1000, 1e-9));
        await scheduleItems({
          count: todo.length,
          batch,
          maxAttempts: opts.maxAttempts,
          timeout,
          itemName,
          attempt: (k, handOffs) => {
            const item = todo[k];
            const tab = currentTab();
            const classify = tab.page.evaluate(([it, n, m, l]) => window.evaluator.classify(it, n, m, l), [item, opts.maxNewTokens, opts.mode, resume.done + k + 1]).then(
              (r) => ({ r }),
              (e) => ({ error: cleanMessage(e) }),
            );
            // Not awaited: a fault may leave its own call unanswered (the item's timeout still runs).
            injectFault(tab, opts, `${spec.name}:${item.index}`, handOffs).catch(() => {});
            return classify;
          },
          // currentTab() is the tab the item ran on: the scheduler drops outcomes from before a restart.
          lost: (error) => {
            const tab = currentTab();
            return needsRestart(tab, error) ? (tab.gone ?? error) : null;
          },
          restart: async (why) => {
            say(`${spec.name}: ${why}; restarting Chromium, then going on (items it held run again, one at a time)`);
            await reopen();
          },
          write: async (k, { r, failed }) => {
            const item = todo[k];
            const line = r ? r.line : await currentTab().page.evaluate(([p, l, w]) => window.evaluator.failedLine(p, l, w), [item.prompt, item.label, failed]);
            if (r) fs.writeSync(scoresFd, r.scoresLine);
            fs.writeSync(fd, line);
            fs.fsyncSync(fd);
            const written = k + 1;
            const wall = (performance.now() - datasetStarted) / 1000;
            const doneCount = resume.done + written;
            if (r) {
              stats.tokens += r.newTokens;
              finishedCounts.push(r.counts);
            } else {
              say(`${itemName(k)}: failed, written as such: ${failed}`);
            }
            const tps = stats.tokens / Math.max(wall, 1e-9);
            const eta = ((plan.items.length - doneCount) * wall) / written;
            bar.tokens(tps);
            bar.item(doneCount, r ? `${doneCount}/${plan.items.length} items, ${r.newTokens} tokens in ${seconds(r.seconds)} (${tps.toFixed(1)} tokens/s so far), eta ${seconds(eta)}` : `${doneCount}/${plan.items.length} items (item ${item.index + 1} failed)`);
          },
        });
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

main().catch((e) => {
  if (interrupted) return; // the signal handler exits with 130 once the browser is closed
  log(`error: ${e instanceof UsageError ? e.message : cleanMessage(e)}`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
