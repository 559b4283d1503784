// Types for guardreasoner.js.

/** `cache: false` keeps nothing in browser storage (for files served from this machine). A Hub
 * `revision` (default "main") is resolved to its commit and pinned; `hfEndpoint` replaces the Hub. */
export type ModelSource =
  /** A URL (absolute; "/", "./", "../" against the page; or ending in ".gguf"): a .gguf file or
   * an HF-style folder; else a Hub repo id ("owner/name"). */
  | string
  | URL
  | { hf: string; revision?: string; hfEndpoint?: string }
  | { url: string; cache?: boolean }
  | { hfBaseUrl: string; cache?: boolean }
  | { file: File };

export interface LoadProgress {
  phase: "download" | "cache" | "copy" | "load";
  file?: string;
  loaded?: number;
  total?: number;
  /** bytes per second (downloads) */
  rate?: number;
  /** seconds left (downloads), when the size is known */
  eta?: number | null;
  /** downloads: bytes already stored when this attempt began (a resumed download) */
  resumedFrom?: number;
}

export interface LoadOptions {
  backend?: "auto" | "webgpu" | "cpu";
  /** transformers.js's word for `backend`: "webgpu", "wasm" (the CPU path), "cpu" or "auto". */
  device?: "auto" | "webgpu" | "wasm" | "cpu";
  /** Float weights once loaded: "q8" (default), "q4" or "none" (keep f32); "f32", "q8_0" and "q4_0" are taken too. */
  quant?: "q8" | "q4" | "none" | "f32" | "q8_0" | "q4_0";
  /** transformers.js's word for `quant`: "q8" (or "int8"), "q4" or "fp32". */
  dtype?: "q8" | "int8" | "q4" | "fp32";
  /** KV cache size in tokens (prompt + new tokens) of one conversation */
  context?: number;
  /** Conversations decoded together (`moderateMany`, concurrent `moderate` calls); default 4 on
   * WebGPU, 1 on the CPU. Each needs its own KV cache of `context` tokens. */
  batch?: number;
  /** Threads of the CPU path (default one per core, at most 8). More than one needs a cross-origin
   * isolated page (COOP `same-origin` + COEP `require-corp`) and the pkg-threads/ build; else 1. */
  threads?: number;
  /** The threaded build uses relaxed-SIMD dot products where the browser has them; false keeps
   * plain SIMD (for comparisons; the results are the same, bit for bit). */
  relaxedSimd?: boolean;
  onProgress?: (p: LoadProgress) => void;
  /** Stops the load (an AbortError at once; downloaded bytes stay stored for a resume). */
  signal?: AbortSignal;
  /** A Hub revision for an `{hf}` source (default "main"). */
  revision?: string;
  workerUrl?: string | URL;
}

export type TaskName = "prompt_harmfulness" | "refusal" | "response_harmfulness";
export type VerdictKind = "request" | "completion" | "response";

export type GuardEvent =
  | { type: "token"; text: string }
  | { type: "task_started"; task: TaskName }
  | { type: "step_started"; task: TaskName; step: number }
  | { type: "step_text"; task: TaskName; step: number; text: string }
  | { type: "step_finished"; task: TaskName; step: number }
  | { type: "conclusion"; task: TaskName; text: string }
  | { type: "verdict"; kind: VerdictKind; value: string | null }
  | { type: "done" };

export interface TaskReasoning {
  task: TaskName;
  steps: string[];
  conclusion: string | null;
}

/** The model's probability of each verdict's positive side, read at the token that wrote the
 * verdict (the softmax over the two alternatives' first tokens); null without a verdict. */
export interface VerdictScores {
  /** P(harmful) */
  request: number | null;
  /** P(refusal) */
  completion: number | null;
  /** P(harmful) */
  response: number | null;
}

/** A score at or above which a verdict is the positive one (harmful, refusal): one number for
 * all three, or some by name. */
export type Threshold = number | { request?: number; completion?: number; response?: number };

/** "reasoning" (default): the model reasons, then answers. "verdict-first": the answer section's
 * opening is given after the prompt, so the three verdicts come at once (a dozen tokens), without
 * reasoning; the model was trained to reason first, so measure this mode's accuracy first. */
export type Mode = "reasoning" | "verdict-first";

export interface ModerateOptions {
  onEvent?: (e: GuardEvent) => void;
  signal?: AbortSignal;
  maxNewTokens?: number;
  mode?: Mode;
  /** Turns scores into verdicts; without it the verdicts are the model's own. */
  threshold?: Threshold;
}

export interface ModerationResult {
  /** The model's verdicts, or with `threshold` the side of it each score is on. */
  request: "harmful" | "unharmful" | null;
  completion: "refusal" | "compliance" | null;
  response: "harmful" | "unharmful" | null;
  scores: VerdictScores;
  /** True in verdict-first mode: `text` starts with the answer header the model was given. */
  verdictFirst: boolean;
  /** False when the output held no verdict line at all (cut off, or the model wandered). */
  verdictFound: boolean;
  /** When `verdictFound` is false: what happened and what to try, e.g. raising `maxNewTokens`. */
  problem: string | null;
  tasks: TaskReasoning[];
  /** The generated text, whole. */
  text: string;
  promptTokens: number;
  /** Prompt tokens whose KV came from the shared GuardReasoner instruction, computed once. */
  reusedTokens: number;
  newTokens: number;
  /** "answered": verdict-first mode read the last answer line, and stopped there. */
  stop: "eos" | "max_tokens" | "context_full" | "answered";
  timings: Timings;
}

/** Measured in the worker's core: time spent queued behind another request is not counted. */
export interface Timings {
  totalSeconds: number;
  timeToFirstTokenSeconds: number | null;
  /** Prompt tokens that ran (not reused) over the time to the first token. */
  prefillTokensPerSecond: number | null;
  /** Decode: tokens after the first over the time after it. */
  tokensPerSecond: number | null;
  /** Until the first verdict was read (prefill included); absent without one. */
  timeToVerdictSeconds?: number;
}

/** The GPU device is gone (a driver reset, the browser reclaiming it): load the model again,
 * on WebGPU or with `backend: "cpu"`. Every pending and later call of that GuardReasoner rejects
 * with it. */
export declare class GpuLostError extends Error {
  readonly name: "GpuLostError";
}

export declare class GuardReasoner {
  /** "gpu (<adapter>)" or "cpu (wasm, candle)" */
  readonly backend: string;
  /** Why the CPU is used when WebGPU was wanted, else null. */
  readonly fallback: string | null;
  /** The loaded model by content: its files' total size and a SHA-256 of their sizes and headers. */
  readonly modelIdentity: { bytes: number; sha256: string };
  /** Conversations decoded together. */
  readonly batch: number;
  /** Threads the CPU path runs on (1 on WebGPU, or where the page cannot have threads). */
  readonly threads: number;
  static load(source: ModelSource, options?: LoadOptions): Promise<GuardReasoner>;
  tokenize(text: string): Promise<number[]>;
  generate(
    ids: ArrayLike<number>,
    options?: { maxNewTokens?: number; onToken?: (t: { token: number; text: string }) => void; signal?: AbortSignal },
  ): Promise<{ tokens: number[]; stop: "eos" | "max_tokens" | "context_full"; promptTokens: number; reusedTokens: number; timings: Timings }>;
  /** The speed test of `guardreasoner bench`: a prefill of `ids`, then `newTokens` greedy steps
   * (EOS ignored, default 64), after a short warm-up. */
  speedTest(
    ids: ArrayLike<number>,
    options?: { newTokens?: number },
  ): Promise<{ promptTokens: number; prefillS: number; genTokens: number; decodeS: number; backend: string }>;
  /** The time-to-verdict test of `guardreasoner bench` on a conversation: a verdict-first run of
   * 2 new tokens (the first verdict) and of 11 (all three), and a reasoning run of 259 (the real
   * outputs' medians), EOS ignored, after the shared instruction's KV is computed. */
  verdictSpeedTest(conversation?: { prompt: string; response?: string | null }): Promise<{
    promptTokens: number;
    reusedTokens: number;
    firstVerdictSeconds: number;
    verdictFirstSeconds: number;
    verdictFirstTokens: number;
    reasoningSeconds: number;
    reasoningTokens: number;
  }>;
  moderate(conversation: { prompt: string; response?: string | null }, options?: ModerateOptions): Promise<ModerationResult>;
  /** Many conversations decoded together; events carry `item` (the index in `conversations`),
   * `onResult` gets each result as it finishes; resolves to the results in order, each what
   * `moderate` gives that conversation alone. */
  moderateMany(
    conversations: { prompt: string; response?: string | null }[],
    options?: {
      onEvent?: (e: GuardEvent & { item: number }) => void;
      onResult?: (index: number, result: ModerationResult) => void;
      signal?: AbortSignal;
      maxNewTokens?: number;
      mode?: Mode;
      threshold?: Threshold;
    },
  ): Promise<ModerationResult[]>;
  /** As `moderate`, on a complete GuardReasoner prompt (instruction + "\n" + conversation). */
  classifyPrompt(text: string, options?: ModerateOptions): Promise<ModerationResult>;
  /** Ends the worker; pending and later calls reject with an AbortError. */
  terminate(): void;
}

/** The source `load` takes, as an object: a string is a Hub repo id ({hf}) or a URL ({url},
 * made absolute against the page). Throws a TypeError for anything else. */
export declare function modelSource(source: ModelSource): Exclude<ModelSource, string | URL>;
