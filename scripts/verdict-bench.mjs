#!/usr/bin/env node
// Time to verdict, the figure a chat page lives by: the time-to-verdict test of `guardreasoner
// bench` (a chat message of a 60-token request and a 120-token response, the shared instruction's
// KV computed before; verdict-first: 2 new tokens to the first verdict, 11 to all three;
// reasoning: 259 to the first verdict; the real GuardReasoner-1B outputs' medians) natively on the CPU and in headless Chromium on the wasm CPU path at 1 and 2
// threads (and on WebGPU with --webgpu), each in its own run of the same model file. Prints a
// markdown table; the JSON lines go to .cache/verdict-bench/results.jsonl.
//
//   node scripts/verdict-bench.mjs [--models "a.gguf b.gguf"] [--threads "1 2"] [--webgpu]
//        [--rounds 3]
//
// Defaults: SmolLM2-135M-Instruct Q4_1 (scripts/fetch-test-assets.sh) and the synthetic
// GuardReasoner-1B Q4_0 (written here with `guardreasoner synth` if missing, as
// scripts/cpu-bench.sh does). Random weights write no verdict: the token counts are the real
// model's, so the times are what the real model takes on this machine. Rounds alternate the
// engines; the table gives each one's median.
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { resultsLog } from "./bench-log.mjs";
import { startServer } from "./serve.mjs";
import { launchChromium } from "./browser.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const NATIVE = path.join(REPO, "target/release/guardreasoner");
const SYNTH_1B = ".cache/cpu-bench/synth-1b-q4_0.gguf";

const { values: opts } = parseArgs({
  options: {
    models: { type: "string" },
    threads: { type: "string", default: "1 2" },
    webgpu: { type: "boolean", default: false },
    rounds: { type: "string", default: "3" },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help) {
  const lines = fs.readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(1);
  console.log(lines.slice(0, lines.findIndex((l) => !l.startsWith("//"))).map((l) => l.replace(/^\/\/ ?/, "")).join("\n"));
  process.exit(0);
}
const threads = opts.threads.split(/[ ,]+/).filter(Boolean).map(Number);
const rounds = Number(opts.rounds);
if (threads.some((t) => !(t > 0)) || !(rounds > 0)) {
  console.error("--threads and --rounds take positive numbers (see --help)");
  process.exit(2);
}
for (const [what, file] of [["the native CLI (cargo build --release)", NATIVE], ["the wasm module (scripts/build-wasm.sh)", path.join(REPO, "www/pkg/guardreasoner_bg.wasm")]]) {
  if (!fs.existsSync(file)) {
    console.error(`missing ${what}: ${file}`);
    process.exit(2);
  }
}
if (!opts.models && !fs.existsSync(path.join(REPO, SYNTH_1B))) {
  console.error(`writing the synthetic 1B Q4_0 to ${SYNTH_1B}...`);
  fs.mkdirSync(path.dirname(path.join(REPO, SYNTH_1B)), { recursive: true });
  execFileSync(NATIVE, ["synth", "--out", path.join(REPO, SYNTH_1B), "--quant", "q4_0"], { stdio: "inherit" });
}
const models = opts.models ? opts.models.split(/\s+/).filter(Boolean) : [".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", SYNTH_1B];
for (const m of models) {
  if (!fs.existsSync(path.resolve(REPO, m)) || !path.resolve(REPO, m).startsWith(REPO + path.sep)) {
    console.error(`${m}: missing, or outside the repository (the page is served from it)`);
    process.exit(2);
  }
}

const log = resultsLog(path.join(REPO, ".cache/verdict-bench"));
const record = log.record;

/** The native CLI's time-to-verdict test (its other figures skipped where it can). */
function native(model) {
  const out = execFileSync(NATIVE, ["bench", "-m", model, "--quiet", "--json", "--backend", "cpu", "--prompt-tokens", "8", "--gen", "8"], { cwd: REPO });
  const r = JSON.parse(out.toString().trim().split("\n").at(-1));
  return { engine: "native", backend: r.backend, ...r.time_to_verdict };
}

const server = await startServer();
const browser = await launchChromium({ webgpu: opts.webgpu });
/** The browser's, through the JS API, in a page of its own. */
async function inBrowser(model, backend, t) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(server.url + "/www/");
  try {
    return await page.evaluate(
      async ({ url, backend, threads }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const guard = await GuardReasoner.load({ url, cache: false }, { backend, threads, context: 1024, batch: 1 });
        try {
          return { engine: "browser", backend: guard.backend, threads: guard.threads, ...(await guard.verdictSpeedTest()) };
        } finally {
          guard.terminate();
        }
      },
      { url: "/" + path.relative(REPO, path.resolve(REPO, model)).split(path.sep).join("/"), backend, threads: t },
    );
  } finally {
    await page.close();
  }
}

try {
  for (let round = 0; round < rounds; round++) {
    for (const model of models) {
      const name = path.basename(model);
      record({ model: name, round, ...native(model) });
      for (const t of threads) record({ model: name, round, ...(await inBrowser(model, "cpu", t)) });
      if (opts.webgpu) record({ model: name, round, ...(await inBrowser(model, "webgpu", 1)) });
    }
  }
} finally {
  await browser.close();
  server.close();
}

const rows = log.rows();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cpu = (fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/) || [])[1] || "this CPU";
const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: REPO }).toString().trim();
console.log(`\n${cpu}, ${new Date().toISOString().slice(0, 10)}, commit ${commit}; medians of ${rounds} rounds; a ${rows[0].promptTokens}-token prompt on the first model, ${rows[0].reusedTokens} of them the shared instruction\n`);
console.log("| model | engine | backend | verdict-first: first verdict (s) | all three (s) | reasoning: first verdict (s) | reasoning: tokens/s, prefill included |");
console.log("|---|---|---|---|---|---|---|");
const keys = [...new Set(rows.map((r) => JSON.stringify([r.model, r.engine, r.backend])))];
for (const key of keys) {
  const [model, engine, backend] = JSON.parse(key);
  const runs = rows.filter((r) => JSON.stringify([r.model, r.engine, r.backend]) === key);
  const request = median(runs.map((r) => r.firstVerdictSeconds));
  const first = median(runs.map((r) => r.verdictFirstSeconds));
  const reasoning = median(runs.map((r) => r.reasoningSeconds));
  console.log(`| ${model} | ${engine} | ${backend} | ${request.toFixed(2)} | ${first.toFixed(2)} | ${reasoning.toFixed(1)} | ${(runs[0].reasoningTokens / reasoning).toFixed(1)} |`);
}
