#!/usr/bin/env node
// Loads a model in headless Chromium N times in a row through the JS API, the way the demo and
// the evaluator do (served from 127.0.0.1, streamed into OPFS, read through sync access handles),
// and reports each load's outcome and seconds and the peak resident memory of Chromium's
// processes. A benchmark and a reliability check for large models, not a timed test.
// Usage: node scripts/load-bench.mjs --model FILE.gguf|HF-FOLDER [--times N] [--backend cpu|webgpu]
//        [--quant q8|q4|none] [--context N[,N...]] [--keep] [--json]
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
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help || !opts.model) {
  console.log("Usage: node scripts/load-bench.mjs --model FILE.gguf|HF-FOLDER [--times N] [--backend cpu|webgpu] [--quant q8|q4|none] [--context N[,N...]] [--keep] [--json]");
  process.exit(opts.help ? 0 : 2);
}

/** Resident bytes of every process whose command line names this run's profile. */
function chromiumRss(profile) {
  let total = 0;
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      if (!fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(profile)) continue;
      const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
      if (rss) total += Number(rss[1]) * 1024;
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
const model = path.resolve(opts.model);
const isFolder = fs.statSync(model).isDirectory();
const prefix = isFolder ? "/bench-model/" : `/bench-model/${path.basename(model)}`;
const server = await startServer({ root: REPO, mounts: { [prefix]: model } });
const profile = fs.mkdtempSync(path.join(REPO, ".cache/load-bench-profile-"));
const browser = await launchChromium({ webgpu: opts.backend !== "cpu", profileDir: profile });
const source = isFolder ? { hfBaseUrl: prefix, cache: opts.keep } : { url: prefix, cache: opts.keep };
const loads = [];
let peak = 0;
const sampler = setInterval(() => (peak = Math.max(peak, chromiumRss(profile))), SAMPLE_MS);
try {
  const page = await browser.newPage();
  await page.goto(`${server.url}/www/`);
  for (let i = 0; i < Number(opts.times); i++) {
    const started = performance.now();
    const out = await page.evaluate(
      async ({ source, backend, quant, context }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        try {
          const guard = await GuardReasoner.load(source, { backend, quant, context });
          const ids = await guard.tokenize("Hello");
          const res = await guard.generate(ids, { maxNewTokens: 1 });
          guard.terminate();
          return { ok: true, backend: guard.backend, tokens: res.tokens.length };
        } catch (e) {
          return { ok: false, error: e.message };
        }
      },
      { source, backend: opts.backend, quant: opts.quant, context: contexts[i % contexts.length] },
    );
    const seconds = (performance.now() - started) / 1000;
    loads.push({ ...out, seconds, context: contexts[i % contexts.length] });
    if (!opts.json) console.error(`load ${i + 1}: ${out.ok ? `ok on ${out.backend}` : `FAILED: ${out.error}`} in ${seconds.toFixed(1)} s`);
  }
} finally {
  clearInterval(sampler);
  await browser.close();
  await server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
const ok = loads.filter((l) => l.ok);
const report = {
  model: opts.model,
  bytes: isFolder ? fs.readdirSync(model).reduce((n, f) => n + fs.statSync(path.join(model, f)).size, 0) : fs.statSync(model).size,
  backend: opts.backend,
  quant: opts.quant,
  loads: loads.length,
  succeeded: ok.length,
  seconds: loads.map((l) => Number(l.seconds.toFixed(2))),
  mean_s: ok.length ? ok.reduce((s, l) => s + l.seconds, 0) / ok.length : null,
  peak_browser_rss_bytes: peak,
  errors: loads.filter((l) => !l.ok).map((l) => l.error),
  outcomes: loads.map((l) => ({ context: l.context, ok: l.ok, error: l.error ?? null })),
};
console.log(JSON.stringify(report));
process.exit(ok.length === loads.length ? 0 : 1);
