// GuardReasoner in the browser: an ES module over the wasm package, running the model in a
// Web Worker so the page stays responsive. The npm package guardreasoner-web is this folder
// (www/package.json); a bundler or a plain page with an import map loads it as it is:
//   import { GuardReasoner } from "guardreasoner-web"; // or "./guardreasoner.js"
//   const guard = await GuardReasoner.load("yueliu1999/GuardReasoner-1B", { onProgress });
//   const result = await guard.moderate({ prompt, response }, { onEvent, signal });

import { CANCEL_SLOTS, DEFAULTS, GPU_LOST_PREFIX, MODES, Reply, Request } from "./protocol.js";

let nextId = 1;

/** transformers.js's `device` words, as `backend` takes them. */
const DEVICES = Object.freeze({ webgpu: "webgpu", wasm: "cpu", cpu: "cpu", auto: "auto" });
/** transformers.js's `dtype` words, as `quant` takes them. */
const DTYPES = Object.freeze({ q8: "q8", int8: "q8", q4: "q4", fp32: "f32" });
/** Words that mean the same setting (the core takes each), for comparing the two names. */
const SAME = Object.freeze({ gpu: "webgpu", none: "f32", q8_0: "q8", q4_0: "q4" });

/** One of two names for an option (`backend`/`device`, `quant`/`dtype`): the one given, or
 * undefined; both given and meaning different settings is an error. */
function either(name, value, alias, aliasValue) {
  const meaning = (word) => SAME[word] ?? word;
  if (value !== undefined && aliasValue !== undefined && meaning(value) !== meaning(aliasValue)) {
    throw new TypeError(`${name} "${value}" and ${alias} "${aliasValue}" disagree: give one of them`);
  }
  return value ?? aliasValue;
}

/** `url`, `hfBaseUrl` and `hfEndpoint` made absolute against the page (its `<base href>` when it
 * has one): the worker, wherever a bundler put it, would resolve a relative one against its own
 * script. */
function pageRelative(source) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  if (!base) return source;
  const out = { ...source };
  for (const key of ["url", "hfBaseUrl", "hfEndpoint"]) if (typeof out[key] === "string") out[key] = new URL(out[key], base).href;
  return out;
}

/**
 * A model source from what `load` was given: objects as they are, a `URL` as `{url}`; a string
 * is a URL when it is absolute, starts with "/", "./" or "../", or ends in ".gguf" (a .gguf file
 * or an HF-style folder ending in "/"), else a Hub repo id ("owner/name", e.g.
 * "yueliu1999/GuardReasoner-1B").
 */
export function modelSource(source) {
  if (typeof URL === "function" && source instanceof URL) return pageRelative({ url: source.href });
  if (typeof source !== "string") {
    if (source && typeof source === "object") return pageRelative(source);
    throw new TypeError(`a model source is a string ("owner/name" or a URL) or an object ({hf}, {url}, {hfBaseUrl}, {file}), not ${source === null ? "null" : typeof source}`);
  }
  const text = source.trim();
  if (/^(https?:\/\/|\/|\.\.?\/)/.test(text) || /\.gguf$/i.test(text)) return pageRelative({ url: text });
  if (/^[A-Za-z0-9][\w.-]*\/[\w.-]*[A-Za-z0-9]$/.test(text) && !text.includes("..")) return { hf: text };
  throw new TypeError(`"${source}" is neither a Hub repo id ("owner/name") nor a URL (https://..., /..., ./...)`);
}

/** The GPU device is gone (a driver reset, the browser reclaiming it): the model must be loaded
 * again, on WebGPU or on the CPU (`backend: "cpu"`). Every pending and later call of the
 * GuardReasoner that met it rejects with it. */
export class GpuLostError extends Error {
  name = "GpuLostError";
}

/** A `threshold` option as the core reads it: "0.7" for all three verdicts, or
 * "request=0.7,response=0.4"; undefined for none. The core checks the numbers. */
function thresholdText(threshold) {
  if (threshold === undefined || threshold === null) return undefined;
  if (typeof threshold === "number") return String(threshold);
  if (typeof threshold === "object") return Object.entries(threshold).filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => `${k}=${v}`).join(",") || undefined;
  throw new TypeError(`threshold must be a number or {request, completion, response}, not ${JSON.stringify(threshold)}`);
}

export class GuardReasoner {
  #worker;
  #pending = new Map();
  #cancel = null; // Int32Array over a SharedArrayBuffer when cross-origin isolated
  #ended = null; // why the worker is gone (terminate, a cancelled load, a crash): later calls fail with it
  backend = "";
  /** Conversations the model decodes together (`moderateMany`, concurrent `moderate` calls). */
  batch = 1;
  /** Threads the CPU path runs on (1 on WebGPU, or where the page cannot have threads). */
  threads = 1;
  fallback = null;
  /** What the loaded model is by content: `{bytes, sha256}` of its files' sizes and headers. */
  modelIdentity = null;

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => this.#receive(e.data);
    worker.onerror = (e) => this.#end(new Error(`worker failed: ${e.message || "unknown error"}`));
    if (globalThis.crossOriginIsolated && typeof SharedArrayBuffer !== "undefined") {
      this.#cancel = new Int32Array(new SharedArrayBuffer(4 * CANCEL_SLOTS));
      worker.postMessage({ type: Request.cancelFlag, buffer: this.#cancel.buffer });
    }
  }

  /**
   * Load a model. `source`: a Hub repo id `"owner/name"` or a URL as a plain string (see
   * `modelSource`), `{url}` (a .gguf URL, or an HF-style folder URL), `{hf: "owner/name",
   * revision?, hfEndpoint?}`, `{hfBaseUrl}` or `{file}` (a .gguf File). Downloads stream into the
   * origin's private file system (OPFS), resume after a break, and are kept for the next visit;
   * `cache: false` in a URL source keeps nothing (for files already on this machine). A Hub
   * revision (default "main"; also the `revision` option) is resolved to its commit, and the files
   * are stored under it: an upstream change is a fresh download, never mixed with stored files. Options: `backend` "auto" (WebGPU on a real
   * GPU, else the CPU: a fallback adapter emulates a GPU on the CPU, slower than the CPU path) | "webgpu" | "cpu",
   * `quant` "q8" | "q4" | "none" (float weights once loaded; "f32", "q8_0", "q4_0" also taken),
   * `context` (tokens per conversation), `batch` (conversations decoded together: default
   * `DEFAULTS.batch` on WebGPU, 1 on the CPU; each needs its own KV cache), `onProgress` (phases: "download" with loaded/total/rate/eta/resumedFrom,
   * "cache", "copy" for a picked file, "load"). `signal` (an AbortSignal) stops the load: the
   * promise rejects with an AbortError at once and the worker is ended; the bytes downloaded so
   * far stay stored and the next load resumes from them. The words transformers.js users know are taken too: `device` ("webgpu",
   * "wasm" or "cpu", "auto") for `backend`, and `dtype` ("q8", "q4", "fp32") for `quant`.
   *
   * `testing` holds the test suite's hooks, outside the public types: `storageQuota` (bytes)
   * stands in for the browser's quota, `gpuBufferLimit` (bytes) for the GPU's buffer binding
   * limit when lower, and `refuseGpuBuffer: true` has the load ask the GPU for a buffer it must
   * refuse, as it would one it has no memory for.
   */
  static async load(source, { onProgress, signal, backend, device, quant, dtype, context = DEFAULTS.context, batch, threads, relaxedSimd, revision, workerUrl, testing = {} } = {}) {
    source = modelSource(source);
    backend = either("backend", backend, "device", device === undefined ? undefined : DEVICES[device] ?? device) ?? DEFAULTS.backend;
    quant = either("quant", quant, "dtype", dtype === undefined ? undefined : DTYPES[dtype] ?? dtype) ?? DEFAULTS.quant;
    if (signal?.aborted) throw new DOMException("the load was cancelled", "AbortError");
    // `new Worker(new URL(literal, import.meta.url))` written out whole: the pattern bundlers
    // recognize, to bundle the worker and emit it beside the page's code.
    const worker = workerUrl ? new Worker(workerUrl, { type: "module" }) : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const guard = new GuardReasoner(worker);
    const onAbort = () => guard.#end(new DOMException("the load was cancelled", "AbortError"));
    signal?.addEventListener("abort", onAbort, { once: true });
    // Ask once that stored models survive storage pressure (the browser may say no; they are then
    // kept as long as it allows).
    await globalThis.navigator?.storage?.persist?.().catch(() => false);
    if (revision && source?.hf && !source.revision) source = { ...source, revision };
    let out;
    try {
      out = await guard.#request({ type: Request.load, source, backend, quant, context, batch, threads, relaxedSimd, quotaOverride: testing.storageQuota, gpuBufferLimit: testing.gpuBufferLimit, testRefuseGpuBuffer: testing.refuseGpuBuffer }, { onProgress });
    } catch (e) {
      guard.#end(e); // a failed load leaves no worker behind
      throw e;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    guard.backend = out.backend;
    guard.batch = out.batch ?? 1;
    guard.threads = out.threads ?? 1;
    guard.fallback = out.fallback;
    guard.modelIdentity = out.modelIdentity;
    return guard;
  }

  /** Token ids of `text`, BOS included. */
  async tokenize(text) {
    return (await this.#request({ type: Request.tokenize, text })).ids;
  }

  /** Greedy generation from token ids. `onToken({token, text})` streams; `signal` cancels. */
  async generate(ids, { maxNewTokens = DEFAULTS.generateMaxNewTokens, onToken, signal } = {}) {
    const { id, type, ...result } = await this.#request({ type: Request.generate, ids: Array.from(ids), maxNewTokens }, { onToken, signal });
    return result;
  }

  /**
   * The speed test `guardreasoner bench` runs: a prefill of `ids`, then `newTokens` greedy steps
   * (EOS ignored), after a short warm-up. Resolves to `{promptTokens, prefillS, genTokens,
   * decodeS, backend}`; tokens/s are `promptTokens / prefillS` and `genTokens / decodeS`.
   */
  async speedTest(ids, { newTokens = 64 } = {}) {
    const { id, type, ...result } = await this.#request({ type: Request.speedTest, ids: Array.from(ids), newTokens });
    return result;
  }

  /**
   * The time-to-verdict test `guardreasoner bench` runs, on a conversation or (without one) on
   * the benchmark's chat message of a 60-token request and a 120-token response: the shared
   * instruction's KV computed first, then verdict-first runs to the first verdict (2 tokens) and
   * to all three (11), and a reasoning run (259 tokens, before the first verdict): the real
   * outputs' medians, EOS ignored. Resolves to `{promptTokens, reusedTokens, firstVerdictSeconds,
   * verdictFirstSeconds, verdictFirstTokens, reasoningSeconds, reasoningTokens}`.
   */
  async verdictSpeedTest({ prompt, response = null } = {}) {
    const { id, type, ...result } = await this.#request({ type: Request.verdictSpeedTest, prompt, response });
    return result;
  }

  /**
   * Classify a conversation. `onEvent(event)` receives `token`, `task_started`, `step_started`,
   * `step_text`, `step_finished`, `conclusion` and `verdict` events as they happen. Resolves to
   * `{request, completion, response, scores, verdictFound, problem, tasks, text, promptTokens,
   * reusedTokens, newTokens, stop, verdictFirst, timings}`; `verdictFound` is false (and `problem`
   * says why, e.g. the new-token limit cut the answer off) when the output held no verdict line.
   * `scores` holds the model's P(harmful) for the request and response and P(refusal) for the
   * completion. Options: `threshold` (a number, or `{request, completion, response}`) turns
   * scores into verdicts; `mode: "verdict-first"` asks for the verdicts at once, without
   * reasoning (a dozen tokens).
   */
  async moderate({ prompt, response = null }, options = {}) {
    return this.#classify({ type: Request.moderate, prompt, response }, options);
  }

  /**
   * Classify many conversations, decoded together (up to `batch` at once; continuous batching:
   * a finished one's place goes to the next at once). `items`: `[{prompt, response?}]`.
   * `onEvent(event)` receives every item's events, each with `item` (its index in `items`);
   * `onResult(index, result)` each result as its item finishes (not in order); `signal` cancels
   * them all. Resolves to the results in the order of `items`; each is exactly what `moderate`
   * gives that item alone. Concurrent `moderate` calls share the batch the same way.
   */
  async moderateMany(items, { onEvent, onResult, signal, maxNewTokens = DEFAULTS.maxNewTokens, mode, threshold } = {}) {
    return Promise.all(
      items.map(async ({ prompt, response = null }, index) => {
        const result = await this.moderate({ prompt, response }, { signal, maxNewTokens, mode, threshold, onEvent: onEvent && ((e) => onEvent({ ...e, item: index })) });
        onResult?.(index, result);
        return result;
      }),
    );
  }

  /**
   * As `moderate`, on a complete GuardReasoner prompt text: the instruction and the conversation,
   * as the paper's benchmark files hold it (`instruction + "\n" + input`). BOS is added.
   */
  async classifyPrompt(text, options = {}) {
    return this.#classify({ type: Request.classify, text }, options);
  }

  async #classify(msg, { onEvent, signal, maxNewTokens = DEFAULTS.maxNewTokens, mode = DEFAULTS.mode, threshold } = {}) {
    if (!MODES.includes(mode)) throw new TypeError(`mode ${JSON.stringify(mode)} is not one of ${MODES.join(", ")}`);
    // The core's result as it is: verdicts, scores, verdictFound/problem, reasoning, counts, and
    // timings measured in the worker (time spent queued behind another request is not counted).
    const { id, type, ...result } = await this.#request({ ...msg, maxNewTokens, mode, threshold: thresholdText(threshold) }, { signal, onEvent });
    return result;
  }

  /** Test hook: destroys the GPU device now, as a driver reset would, even in the middle of a
   * run (which then rejects with a GpuLostError). Resolves to false on the CPU path. */
  async loseGpuDevice() {
    return (await this.#request({ type: Request.loseGpu })).lost;
  }

  /** Stop the worker and free the model. Calls still pending reject with an AbortError; later
   * calls reject at once. */
  terminate() {
    this.#end(new DOMException("the model was unloaded (terminate)", "AbortError"));
  }

  /** Ends the worker once: every pending call rejects with `error`, and so does every later one. */
  #end(error) {
    if (this.#ended) return;
    this.#ended = error;
    this.#worker.terminate();
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(error);
  }

  #request(msg, { onProgress, onEvent, onToken, signal } = {}) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      if (this.#ended) return reject(this.#ended);
      if (signal?.aborted) return reject(new DOMException("cancelled", "AbortError"));
      const onAbort = () => {
        if (this.#cancel) Atomics.store(this.#cancel, id % CANCEL_SLOTS, id);
        this.#worker.postMessage({ type: Request.cancel, id });
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      if (this.#cancel) Atomics.store(this.#cancel, id % CANCEL_SLOTS, 0);
      this.#pending.set(id, {
        onProgress,
        onEvent,
        onToken,
        resolve: (v) => (signal?.removeEventListener("abort", onAbort), resolve(v)),
        reject: (e) => (signal?.removeEventListener("abort", onAbort), reject(e)),
      });
      this.#worker.postMessage({ ...msg, id });
    });
  }

  #receive(msg) {
    const p = this.#pending.get(msg.id);
    if (!p) return;
    if (msg.type === Reply.progress) p.onProgress?.(msg);
    else if (msg.type === Reply.event) p.onEvent?.(msg.event);
    else if (msg.type === Reply.token) p.onToken?.({ token: msg.token, text: msg.text });
    else if (msg.type === Reply.result) {
      this.#pending.delete(msg.id);
      p.resolve(msg);
    } else if (msg.type === Reply.error) {
      this.#pending.delete(msg.id);
      if (msg.message.startsWith(GPU_LOST_PREFIX)) {
        // Nothing can run on this model again: free the worker, and fail what waits with it.
        const lost = new GpuLostError(msg.message);
        p.reject(lost);
        this.#end(lost);
        return;
      }
      const err = msg.message === "cancelled" ? new DOMException("cancelled", "AbortError") : new Error(msg.message);
      p.reject(err);
    }
  }
}
