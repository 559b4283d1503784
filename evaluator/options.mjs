// The evaluator's command line: its options, their defaults and help text, checked into the
// settings a run uses; what --model names (a URL, a local file or folder, a Hugging Face repo id);
// and the test hook's faults. evaluator/README.md documents the options.
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { BACKENDS, DEFAULTS, DEFAULT_MODEL, QUANTS } from "../www/protocol.js";
import { FIRST_ITEM_TIMEOUT_S, MIN_ITEM_TIMEOUT_S, TIMEOUT_FACTOR } from "./scheduler.mjs";

// The repository root: the server's root, and the default --profile's parent.
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
// URL prefix the local model file or folder is served under.
const LOCAL_MODEL_PREFIX = "/local-model/";
// Tries of an item before it is written as failed (--max-attempts).
const DEFAULT_MAX_ATTEMPTS = 3;
// Test hook: faults to inject, as JSON {"<Dataset>:<0-based benchmark index>": kind}; kind is
// "hang" (the page's main thread stops), "crash" (the renderer crashes), "lose-gpu" (the GPU
// device is destroyed), each when the item is first handed to a page, or with "-always" every time.
const FAULTS_ENV = "GUARDREASONER_EVALUATOR_FAULTS";

export const USAGE = `Usage: evaluator/evaluate.sh --benchmark-dir DIR --out DIR [options]

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

export class UsageError extends Error {}

/** The run's settings from the command line; null for --help. */
export function parseOptions(argv) {
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
export function modelSource(model) {
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
