#!/usr/bin/env node
// The browser's CPU path next to wllama (llama.cpp compiled to wasm, npm @wllama/wllama), in one
// run, in the same headless Chromium with WebGPU off: the same GGUF files, the same prompt text
// and the same number of new tokens, both at 1 and 2 threads (ours: pkg/ on one,
// pkg-threads-relaxed/ on more, or pkg-threads/ with --plain-simd). Ours runs the speed test of
// `guardreasoner bench` through the JS API (`guard.speedTest`); wllama's figures are llama.cpp's
// own timings of one completion (prompt cache off, EOS ignored, greedy). Prints a markdown
// table; the JSON lines go to .cache/browser-bench/results.jsonl.
//
//   node scripts/browser-cpu-bench.mjs [--prompt 512] [--gen 64] [--threads "1 2"]
//        [--models "a.gguf b.gguf"] [--plain-simd]
//
// wllama is installed once under .cache/wllama (npm). Defaults: SmolLM2-135M-Instruct Q4_1 (the
// test assets, scripts/fetch-test-assets.sh) and the synthetic GuardReasoner-1B Q4_0 that
// scripts/cpu-bench.sh writes (`guardreasoner synth`). The page is served cross-origin isolated
// (scripts/serve.mjs), which wllama's threads need.
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { resultsLog } from "./bench-log.mjs";
import { startServer } from "./serve.mjs";
import { launchChromium } from "./browser.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const WLLAMA_VERSION = "3.13.0";
const WLLAMA_DIR = ".cache/wllama";
const WLLAMA_ESM = `${WLLAMA_DIR}/node_modules/@wllama/wllama/esm`;
/** Repeated until the prompt is long enough (both engines read the same text). */
const SENTENCE = "The quick brown fox jumps over the lazy dog while the old clock in the hall strikes nine. ";

const { values: opts } = parseArgs({
  options: {
    prompt: { type: "string", default: "512" },
    gen: { type: "string", default: "64" },
    threads: { type: "string", default: "1 2" },
    models: { type: "string" },
    // Ours without relaxed-SIMD (pkg-threads/ instead of pkg-threads-relaxed/).
    "plain-simd": { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help) {
  const lines = fs.readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(1);
  console.log(lines.slice(0, lines.findIndex((l) => !l.startsWith("//"))).map((l) => l.replace(/^\/\/ ?/, "")).join("\n"));
  process.exit(0);
}
const promptTokens = Number(opts.prompt);
const gen = Number(opts.gen);
const threads = opts.threads.split(/[ ,]+/).filter(Boolean).map(Number);
if (!(promptTokens > 0) || !(gen > 0) || threads.some((t) => !(t > 0))) {
  console.error("--prompt, --gen and --threads take positive numbers (see --help)");
  process.exit(2);
}
const models = opts.models
  ? opts.models.split(/\s+/).filter(Boolean)
  : [".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", ".cache/cpu-bench/synth-1b-q4_0.gguf"];
for (const m of models) {
  if (!fs.existsSync(path.resolve(REPO, m))) {
    console.error(`${m} is missing (scripts/fetch-test-assets.sh writes SmolLM2; scripts/cpu-bench.sh the synthetic 1B)`);
    process.exit(2);
  }
  if (!path.resolve(REPO, m).startsWith(REPO + path.sep)) {
    console.error(`${m}: the models must be inside the repository (the page is served from it)`);
    process.exit(2);
  }
}
if (!fs.existsSync(path.join(REPO, "www/pkg/guardreasoner_bg.wasm"))) {
  console.error("build the wasm module first: scripts/build-wasm.sh");
  process.exit(2);
}
if (!fs.existsSync(path.join(REPO, WLLAMA_ESM, "index.js"))) {
  console.error(`installing @wllama/wllama@${WLLAMA_VERSION} under ${WLLAMA_DIR}...`);
  fs.mkdirSync(path.join(REPO, WLLAMA_DIR), { recursive: true });
  execFileSync("npm", ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", WLLAMA_DIR, `@wllama/wllama@${WLLAMA_VERSION}`], { cwd: REPO, stdio: "inherit" });
}

const log = resultsLog(path.join(REPO, ".cache/browser-bench"));
const record = log.record;

const server = await startServer();
const browser = await launchChromium({ webgpu: false });
try {
  for (const model of models) {
    const url = "/" + path.relative(REPO, path.resolve(REPO, model)).split(path.sep).join("/");
    const name = path.basename(model);
    // One page per engine and setting, so neither keeps the other's memory or threads.
    const page = async () => {
      const p = await browser.newPage();
      p.on("pageerror", (e) => console.error(`page error: ${e.message}`));
      await p.goto(server.url + "/www/");
      return p;
    };
    // Ours, at each thread count: the prompt text to token ids (the GGUF's tokenizer), cut to
    // the length asked for.
    let text = null;
    for (const t of threads) {
      const p = await page();
      const ours = await p.evaluate(
        async ({ url, sentence, promptTokens, gen, threads, relaxedSimd }) => {
          const { GuardReasoner } = await import("/www/guardreasoner.js");
          const guard = await GuardReasoner.load({ url }, { backend: "cpu", threads, relaxedSimd, context: promptTokens + gen + 16 });
          try {
            let text = sentence;
            let ids = await guard.tokenize(text);
            while (ids.length < promptTokens) {
              text += sentence;
              ids = await guard.tokenize(text);
            }
            const r = await guard.speedTest(ids.slice(0, promptTokens), { newTokens: gen });
            return { ...r, text, threads: guard.threads };
          } finally {
            guard.terminate();
          }
        },
        { url, sentence: SENTENCE, promptTokens, gen, threads: t, relaxedSimd: !opts["plain-simd"] },
      );
      await p.close();
      text = ours.text;
      record({
        engine: "guardreasoner",
        model: name,
        threads: ours.threads,
        backend: ours.backend,
        prompt_tokens: ours.promptTokens,
        prefill_tokens_per_s: ours.promptTokens / ours.prefillS,
        decode_tokens_per_s: ours.genTokens / ours.decodeS,
      });
    }
    // wllama: the same text (its prompt_tokens may differ from ours by the last sentence's).
    for (const t of threads) {
      const p = await page();
      const w = await p.evaluate(
        async ({ url, esm, text, n, gen, promptTokens }) => {
          const { Wllama } = await import(`${esm}/index.js`);
          const wllama = new Wllama({ default: `${esm}/wasm/wllama.wasm` }, { suppressNativeLog: true });
          await wllama.loadModelFromUrl(url, { n_threads: n, n_ctx: promptTokens + gen + 64, n_batch: 512, n_gpu_layers: 0, useCache: false });
          try {
            // A short warm-up, then the measured completion.
            await wllama.createCompletion({ prompt: "Hello", max_tokens: 2, temperature: 0, cache_prompt: false });
            const res = await wllama.createCompletion({ prompt: text, max_tokens: gen, temperature: 0, ignore_eos: true, cache_prompt: false });
            return { timings: res.timings, threads: wllama.getNumThreads(), multithread: wllama.isMultithread() };
          } finally {
            await wllama.exit();
          }
        },
        { url, esm: "/" + WLLAMA_ESM, text, n: t, gen, promptTokens },
      );
      await p.close();
      record({
        engine: "wllama",
        model: name,
        threads: w.multithread ? w.threads : 1,
        prompt_tokens: w.timings.prompt_n,
        prefill_tokens_per_s: w.timings.prompt_per_second,
        decode_tokens_per_s: w.timings.predicted_per_second,
      });
    }
  }
} finally {
  await browser.close();
  server.close();
}

const rows = log.rows();
const cpu = (fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/) || [])[1] || "this CPU";
console.log(`\n${cpu}, headless Chromium, WebGPU off, ${promptTokens}-token prompt, ${gen} new tokens\n`);
console.log("| model | engine | threads | prompt tokens | prefill / decode (tokens/s) | ours at these threads vs it |");
console.log("|---|---|---|---|---|---|");
for (const model of [...new Set(rows.map((r) => r.model))]) {
  for (const r of rows.filter((x) => x.model === model)) {
    const ours = rows.find((x) => x.model === model && x.engine === "guardreasoner" && x.threads === r.threads);
    const vs = r.engine === "guardreasoner" ? r.backend : ours ? `${(ours.prefill_tokens_per_s / r.prefill_tokens_per_s).toFixed(2)}x / ${(ours.decode_tokens_per_s / r.decode_tokens_per_s).toFixed(2)}x` : "-";
    console.log(`| ${model} | ${r.engine} | ${r.threads} | ${r.prompt_tokens} | ${r.prefill_tokens_per_s.toFixed(1)} / ${r.decode_tokens_per_s.toFixed(1)} | ${vs} |`);
  }
}
