#!/usr/bin/env node
// Loads a model in headless Chromium N times in a row through the JS API, the way the demo and
// the evaluator do (served from 127.0.0.1, streamed into OPFS, read through sync access handles),
// and reports each load's outcome and seconds and the peak memory of Chromium's processes: the
// summed proportional set size (PSS, /proc/PID/smaps_rollup: shared pages counted once), also
// minus the same peak for a load of a tiny model (--baseline; the browser, the page and the wasm
// module), so what is left is what the model costs, beside the model's bytes. A benchmark and a
// reliability check for large models, not a timed test.
// Usage: node scripts/load-bench.mjs --model FILE.gguf|HF-FOLDER [--times N] [--backend cpu|webgpu]
//        [--quant q8|q4|none] [--context N[,N...]] [--keep] [--stored] [--threads N]
//        [--baseline DIR|FILE|none] [--json]
// (--context: the KV cache of each load in turn, default 64; e.g. 131072,64 asks for a cache that
// cannot fit, then a normal load in the same page)
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { startServer } from "./serve.mjs";
import { launchChromium } from "./browser.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** How often Chromium's memory is sampled. */
const SAMPLE_MS = 200;

const { values: opts } = parseArgs({
  options: {
    model: { type: "string" },
    times: { type: "string", default: "10" },
    backend: { type: "string", default: "cpu" },
    quant: { type: "string", default: "q8" },
    context: { type: "string", default: "64" },
    // Keep the model in OPFS between loads (a cached reload) instead of a fresh copy each time.
    keep: { type: "boolean", default: false },
    // Download the model into OPFS first, in a page closed before the measured loads (which then
    // read it from OPFS, as a returning visitor's tab does): the loads' peaks without the download.
    stored: { type: "boolean", default: false },
    // The tiny model whose load is the baseline (the same backend, quant and context), or "none".
    baseline: { type: "string", default: ".cache/tiny-rebuilt/llama32" },
    // Threads of the wasm CPU path (1: the single-threaded build; default: one per core).
    threads: { type: "string" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help || !opts.model) {
  console.log("Usage: node scripts/load-bench.mjs --model FILE.gguf|HF-FOLDER [--times N] [--backend cpu|webgpu] [--quant q8|q4|none] [--context N[,N...]] [--keep] [--stored] [--threads N] [--baseline DIR|FILE|none] [--json]");
  process.exit(opts.help ? 0 : 2);
}

/** Summed resident and proportional set sizes of every process whose command line names this
 * run's profile (PSS counts a page shared by n processes as 1/n in each). */
function chromiumMemory(profile) {
  const total = { rss: 0, pss: 0, byType: {} };
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmdline.includes(profile)) continue;
      const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
      const pss = Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
      total.rss += Number(/^Rss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
      total.pss += pss;
      // The process's kind: renderer (the page and its workers), gpu-process, utility, or browser.
      const type = /--type=([a-z-]+)/.exec(cmdline)?.[1] ?? "browser";
      total.byType[type] = (total.byType[type] ?? 0) + pss;
    } catch {
      // the process ended while we looked
    }
  }
  return total;
}

const contexts = opts.context.split(",").map(Number);
if (!contexts.every((c) => Number.isInteger(c) && c > 0)) {
  console.error(`--context ${opts.context}: expected positive whole numbers, comma-separated`);
  process.exit(2);
}
/** `times` loads of `modelPath` in one fresh browser: each load's outcome and the peak memory. */
async function loadRuns(modelPath, times, log) {
  const model = path.resolve(modelPath);
  const isFolder = fs.statSync(model).isDirectory();
  const prefix = isFolder ? "/bench-model/" : `/bench-model/${path.basename(model)}`;
  const server = await startServer({ root: REPO, mounts: { [prefix]: model } });
  const profile = fs.mkdtempSync(path.join(REPO, ".cache/load-bench-profile-"));
  const browser = await launchChromium({ webgpu: opts.backend !== "cpu", profileDir: profile });
  const keep = opts.keep || opts.stored;
  const source = isFolder ? { hfBaseUrl: prefix, cache: keep } : { url: prefix, cache: keep };
  const loads = [];
  const peak = { rss: 0, pss: 0 };
  let loadPeak = 0; // this load's peak PSS
  const typePeaks = {}; // each kind of process's own peak PSS over the run
  const sampler = setInterval(() => {
    const now = chromiumMemory(profile);
    peak.rss = Math.max(peak.rss, now.rss);
    peak.pss = Math.max(peak.pss, now.pss);
    loadPeak = Math.max(loadPeak, now.pss);
    for (const [type, pss] of Object.entries(now.byType)) typePeaks[type] = Math.max(typePeaks[type] ?? 0, pss);
  }, SAMPLE_MS);
  try {
    if (opts.stored) {
      const first = await browser.newPage();
      await first.goto(`${server.url}/www/`);
      await first.evaluate(async ({ source }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        (await GuardReasoner.load(source, { backend: "cpu", quant: "q8", context: 64 })).terminate();
      }, { source });
      await first.close();
      await new Promise((resolve) => setTimeout(resolve, 2000)); // its renderer exits
    }
    const page = await browser.newPage();
    await page.goto(`${server.url}/www/`);
    peak.rss = peak.pss = 0;
    for (const type of Object.keys(typePeaks)) delete typePeaks[type];
    for (let i = 0; i < times; i++) {
      const started = performance.now();
      loadPeak = 0;
      const out = await page.evaluate(
        async ({ source, backend, quant, context, threads }) => {
          const { GuardReasoner } = await import("/www/guardreasoner.js");
          try {
            const guard = await GuardReasoner.load(source, { backend, quant, context, threads });
            const ids = await guard.tokenize("Hello");
            const res = await guard.generate(ids, { maxNewTokens: 1 });
            guard.terminate();
            return { ok: true, backend: guard.backend, tokens: res.tokens.length };
          } catch (e) {
            return { ok: false, error: e.message };
          }
        },
        { source, backend: opts.backend, quant: opts.quant, context: contexts[i % contexts.length], threads: opts.threads ? Number(opts.threads) : undefined },
      );
      const seconds = (performance.now() - started) / 1000;
      loads.push({ ...out, seconds, context: contexts[i % contexts.length], peakPss: loadPeak });
      if (log) console.error(`load ${i + 1}: ${out.ok ? `ok on ${out.backend}` : `FAILED: ${out.error}`} in ${seconds.toFixed(1)} s`);
    }
  } finally {
    clearInterval(sampler);
    await browser.close();
    await server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  const bytes = isFolder ? fs.readdirSync(model).reduce((n, f) => n + fs.statSync(path.join(model, f)).size, 0) : fs.statSync(model).size;
  return { loads, peak, bytes, typePeaks };
}

const baseline = opts.baseline === "none" ? null : await loadRuns(opts.baseline, 1, false);
if (baseline && !opts.json) console.error(`baseline (${opts.baseline}): peak PSS ${(baseline.peak.pss / 2 ** 20).toFixed(0)} MiB`);
const { loads, peak, bytes, typePeaks } = await loadRuns(opts.model, Number(opts.times), !opts.json);
const ok = loads.filter((l) => l.ok);
const report = {
  model: opts.model,
  bytes,
  backend: opts.backend,
  quant: opts.quant,
  loads: loads.length,
  succeeded: ok.length,
  seconds: loads.map((l) => Number(l.seconds.toFixed(2))),
  // Each load's own peak (with --keep, the second and later loads read OPFS without a download).
  peak_pss_per_load_bytes: loads.map((l) => l.peakPss),
  mean_s: ok.length ? ok.reduce((s, l) => s + l.seconds, 0) / ok.length : null,
  peak_browser_rss_bytes: peak.rss,
  peak_browser_pss_bytes: peak.pss,
  peak_pss_by_process_bytes: typePeaks,
  baseline_peak_pss_by_process_bytes: baseline?.typePeaks ?? null,
  baseline: opts.baseline,
  baseline_peak_pss_bytes: baseline?.peak.pss ?? null,
  // What the model's loads cost over the tiny model's, and that against the model's own bytes.
  model_peak_pss_bytes: baseline ? peak.pss - baseline.peak.pss : null,
  model_peak_over_file: baseline ? Number(((peak.pss - baseline.peak.pss) / bytes).toFixed(2)) : null,
  errors: loads.filter((l) => !l.ok).map((l) => l.error),
  outcomes: loads.map((l) => ({ context: l.context, ok: l.ok, error: l.error ?? null })),
};
console.log(JSON.stringify(report));
process.exit(ok.length === loads.length ? 0 : 1);
