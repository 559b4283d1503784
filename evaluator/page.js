// The page the batch evaluator (evaluator/evaluate.mjs) drives through playwright: it loads the
// same wasm package as the demo, runs the model in the same Web Worker (GuardReasoner), and
// exposes `window.evaluator` for the evaluator to call. Item selection, prompts, predictions lines,
// resume points and scoring come from the wasm module, so they are the native CLI's too.
import init, { benchmark_datasets, plan_benchmark, resume_point, prediction_line, failed_prediction_line, scores_line, kept_scores, score_predictions, run_manifest, report_html, RunSummary } from "../www/pkg/guardreasoner.js";
import { GuardReasoner } from "../www/guardreasoner.js";

// How often token counts go back to the evaluator while an item generates.
const TOKEN_REPORT_MS = 250;

const status = document.getElementById("status");
const current = document.getElementById("current");
let guard = null;

/** What the browser says of its WebGPU adapter (vendor, architecture), or why there is none. */
async function adapterInfo() {
  if (!navigator.gpu) return { available: false, description: "no WebGPU in this browser" };
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { available: false, description: "WebGPU gave no adapter" };
    const info = adapter.info || (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
    const parts = [info.vendor, info.architecture, info.device, info.description].filter((p) => p);
    return { available: true, vendor: info.vendor || "", architecture: info.architecture || "", description: parts.join(" ") || "unnamed adapter" };
  } catch (e) {
    return { available: false, description: `WebGPU adapter request failed: ${e.message}` };
  }
}

window.evaluator = {
  datasets: () => benchmark_datasets(),
  plan: (dataset, file, text, limit, shardIndex, shardCount) => plan_benchmark(dataset, file, text, limit ?? -1, shardIndex, shardCount),
  // `existing`: the file's bytes in base64 (offsets are bytes, whatever a cut-off write left).
  resume: (file, existing, planned) => resume_point(file, Uint8Array.from(atob(existing), (c) => c.charCodeAt(0)), planned),
  // `predictions`: [{dataset, source, text, scores?}] (scores: the dataset's scores.jsonl text).
  score: (predictions, wildGuardItems) => score_predictions(predictions, wildGuardItems ?? undefined),
  /** A scores.jsonl text cut to the first `done` predictions (a resumed run). */
  keptScores: (file, text, done) => kept_scores(file, text, done),
  /** report.html's text from summary.json's text. */
  report: (summaryText) => report_html(summaryText),
  adapter: adapterInfo,
  // run.json: checked against `existing` (resolves to undefined) or made (resolves to its text),
  // bound to the loaded model's identity.
  manifest: (settings, existing, folder) => run_manifest({ ...settings, model_identity: guard.modelIdentity }, existing ?? undefined, folder),
  // The line of an item the evaluator gave up on (never scored; a rerun resumes after it).
  failedLine: (prompt, label, reason) => failed_prediction_line(prompt, label, reason),
  // Destroys the GPU device now (a test hook: what follows a lost GPU); false on the CPU.
  loseGpu: () => (guard ? guard.loseGpuDevice() : false),
  /** summary.json's object. `datasets`: `[{name, items, benchmarkItems, finished: [[newTokens,
   * promptTokens, reusedTokens, seconds, firstTokenSeconds], ...], generationSeconds}]`, kept
   * by the evaluator (a page restarted mid-run has not seen every item). */
  summary: (datasets, manifest, shardIndex, shardCount, limit, engine, loadSeconds, wallSeconds, report) => {
    const summary = new RunSummary();
    for (const d of datasets) {
      summary.start_dataset(d.name, d.items, d.benchmarkItems);
      for (const counts of d.finished) summary.add_item(...counts);
      // The dataset's generation time on the wall clock (batched items overlap).
      summary.set_generation_s(d.generationSeconds);
    }
    const run = { shardIndex, shardCount, limit: limit === null || limit < 0 ? null : limit, engine, loadSeconds, wallSeconds };
    return summary.to_json(manifest, run, report);
  },

  async load(source, { backend, quant, context, batch }) {
    guard?.terminate();
    guard = null;
    status.textContent = "loading the model";
    guard = await GuardReasoner.load(source, {
      backend,
      quant,
      context,
      batch,
      onProgress: (p) => window.evaluatorProgress?.({ phase: p.phase, file: p.file ?? null, loaded: p.loaded ?? 0, total: p.total ?? 0, message: p.message ?? null }),
    });
    status.textContent = `model loaded on ${guard.backend}`;
    return { backend: guard.backend, fallback: guard.fallback, batch: guard.batch, modelIdentity: guard.modelIdentity };
  },

  /** Run one planned item; resolves to its predictions line, its scores line (for predictions
   * line `line`) and counts. Calls may overlap: the worker decodes overlapping items together (up
   * to the model's batch). `mode`: "reasoning" or "verdict-first". */
  async classify(item, maxNewTokens, mode, line) {
    if (!guard) throw new Error("no model is loaded");
    current.textContent = `item ${item.index + 1}`;
    let tokens = 0;
    let reported = performance.now();
    const out = await guard.classifyPrompt(item.prompt, {
      maxNewTokens,
      mode,
      onEvent: (e) => {
        if (e.type !== "token") return;
        tokens++; // one event per text delta: close to, not exactly, the token count
        if (performance.now() - reported > TOKEN_REPORT_MS) {
          reported = performance.now();
          window.evaluatorTokens?.(tokens);
        }
      },
    });
    const t = out.timings;
    return {
      // RunSummary.add_item's arguments.
      counts: [out.newTokens, out.promptTokens, out.reusedTokens, t.totalSeconds, t.timeToFirstTokenSeconds ?? t.totalSeconds],
      line: prediction_line(item.prompt, item.label, out.text),
      scoresLine: scores_line(line, out.scores),
      promptTokens: out.promptTokens,
      reusedTokens: out.reusedTokens,
      newTokens: out.newTokens,
      stop: out.stop,
      seconds: out.timings.totalSeconds,
      // Until the first text: the prompt's prefill (the part not reused from the previous item).
      firstTokenSeconds: out.timings.timeToFirstTokenSeconds,
    };
  },
};

await init();
status.textContent = "ready";
window.evaluatorReady = true;
