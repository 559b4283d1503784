// What the page, the Web Worker, the demo and the evaluator share, spelled once: the worker's
// message kinds, the defaults, the words the backend and quantization options take, the cache
// name and the files of a Hugging Face model folder. No browser API is used here, so Node
// (evaluator/evaluate.mjs) imports it too.

/** Requests to the worker: `{id, type, ...}`. */
export const Request = Object.freeze({
  load: "load",
  tokenize: "tokenize",
  generate: "generate",
  /** `{type, ids, newTokens}`: the CLI's `bench` speed test (prefill, then greedy steps). */
  speedTest: "speed-test",
  /** `{type, prompt?, response?}`: the CLI's `bench` time-to-verdict test on a conversation
   * (without one, on the benchmark's chat message). */
  verdictSpeedTest: "verdict-speed-test",
  moderate: "moderate",
  classify: "classify",
  /** `{type, buffer}`: a SharedArrayBuffer of `CANCEL_SLOTS` Int32s; slot `id % CANCEL_SLOTS`
   * holds `id` once request `id` is cancelled (cross-origin isolated pages). */
  cancelFlag: "cancel-flag",
  /** `{type, id}`: cancels request `id` (effective at its next await without a cancel flag). */
  cancel: "cancel",
  /** `{type, id}`: destroys the GPU device now, even mid-run, as a driver reset would (a test
   * hook for what follows a lost GPU); replies `{lost}` (false on the CPU). */
  loseGpu: "lose-gpu",
});

/** How the core's message for a lost GPU device starts (Rust `error::GPU_LOST_PREFIX`). */
export const GPU_LOST_PREFIX = "the GPU device was lost";

/** Replies from the worker: `{id, type, ...}`. */
export const Reply = Object.freeze({
  progress: "progress",
  event: "event",
  token: "token",
  result: "result",
  error: "error",
});

export const DEFAULTS = Object.freeze({
  backend: "auto",
  quant: "q8",
  /** KV cache tokens: prompt + new tokens. */
  context: 4096,
  /** New tokens of a classification (the model's answers run to ~250; 2048 is the paper's cap). */
  maxNewTokens: 2048,
  /** How a classification answers: "reasoning" (the model's reasoning, then its verdicts) or
   * "verdict-first" (the verdicts at once, without reasoning). */
  mode: "reasoning",
  /** New tokens of a plain `generate`. */
  generateMaxNewTokens: 32,
  /** Conversations decoded together on WebGPU (`moderateMany`, concurrent `moderate` calls);
   * the wasm CPU path takes 1 unless asked. Each needs a KV cache of `context` tokens. */
  batch: 4,
  /** Most threads of the wasm CPU path (a load's `threads` option; by default one per core). */
  maxThreads: 8,
});

/** Slots of the shared cancel flags (requests in flight at once, at most, that keep their own). */
export const CANCEL_SLOTS = 256;

/** The model the pages and the evaluator load unless told otherwise. */
export const DEFAULT_MODEL = "yueliu1999/GuardReasoner-1B";

/** The words the options take (the core accepts these and refuses others with a message; Rust
 * `Device::WORDS`, `Quant::WORDS`, `MODES`, checked by tests/browser/vocabulary.test.mjs). */
export const BACKENDS = Object.freeze(["auto", "webgpu", "gpu", "cpu"]);
export const QUANTS = Object.freeze(["q8", "q4", "none", "f32", "q8_0", "q4_0"]);
export const MODES = Object.freeze(["reasoning", "verdict-first"]);

/** A page's `?name=word`, as the API would read it (trimmed, any case): undefined when absent; a
 * word not in `words` throws an error that names them, so a page refuses what the API refuses
 * instead of quietly loading something else. */
export function queryWord(query, name, words) {
  const word = query.get(name)?.trim().toLowerCase();
  if (word === undefined || word === "") return undefined;
  if (words.includes(word)) return word;
  throw new Error(`?${name}=${query.get(name)} is not one of ${words.join(", ")}`);
}

/** The files of an evaluator run, beside the predictions of each dataset (Rust
 * `guard::{PREDICTIONS_FILE, SCORES_FILE, MANIFEST_FILE, SUMMARY_FILE, REPORT_FILE}`). */
export const RUN_FILES = Object.freeze({
  predictions: "generated_predictions.jsonl",
  scores: "scores.jsonl",
  manifest: "run.json",
  summary: "summary.json",
  report: "report.html",
});

/** Cache Storage that held downloaded model files before they moved to OPFS (cleared with them). */
export const CACHE_NAME = "guardreasoner-models";

/** The OPFS folder of downloaded model files (www/model-store.js). */
export const MODELS_DIR = "guardreasoner-models";

/** A Hugging Face model folder: the files the worker fetches. */
export const HF_FILES = Object.freeze({
  config: "config.json",
  generationConfig: "generation_config.json",
  tokenizer: "tokenizer.json",
  shardIndex: "model.safetensors.index.json",
  singleShard: "model.safetensors",
});

/** The Hugging Face Hub; `hfEndpoint` in a source points elsewhere (a mirror, a test server). */
export const HUB_ENDPOINT = "https://huggingface.co";

/** Where the Hub serves a repo's files at a revision (a branch, a tag or a commit). */
export const hubBaseUrl = (repo, revision = "main", endpoint = HUB_ENDPOINT) => `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/`;

/** The Hub's answer to "which commit is this revision": `{sha, ...}`. */
export const hubRevisionUrl = (repo, revision = "main", endpoint = HUB_ENDPOINT) => `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
