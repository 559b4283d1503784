// The Web Worker that owns the model: loads the wasm module, resolves a model source to files
// (downloaded with progress and resume into OPFS, www/model-store.js; or a picked File), and runs
// requests in order, one at a time, except classifications: those that arrive while others run
// join them in one batch (the session decodes up to its batch together, continuous batching).
// Protocol (www/protocol.js): requests {id, type, ...}; replies {id, type, ...}.
import { DEFAULTS, HF_FILES, HUB_ENDPOINT, Reply, Request, hubBaseUrl, hubRevisionUrl } from "./protocol.js";
import { StorageError, pins, storedFile, storedUpload } from "./model-store.js";

let session = null; // the wasm Session
// The wasm module, chosen and started at the first load: pkg-threads/ (rayon on Web Workers
// sharing the module's memory) where the page is cross-origin isolated, the CPU path is asked
// for and more than one thread; else pkg/. `threads`: rayon's pool size (1 for pkg/).
let wasm = null;
let threads = 1;
// The builds sit beside this file (www/ in the repository, the npm package's root). The
// single-threaded one is imported by a literal path, so bundlers (Vite, webpack 5) bundle it and
// emit its .wasm (wasm-bindgen finds it with `new URL(..., import.meta.url)`). The threaded ones
// are imported by a URL made at run time, which bundlers leave alone: their thread pool's
// workers import the build's own file again by its URL, which only works unbundled. In a
// bundled app they are found where the worker's bundle is served only if copied there; when
// they are missing the import fails and the load goes on with pkg/ (one thread).
const BUILDS = {
  "pkg-threads-relaxed": () => importBeside("pkg-threads-relaxed/guardreasoner.js"),
  "pkg-threads": () => importBeside("pkg-threads/guardreasoner.js"),
  pkg: () => import("./pkg/guardreasoner.js"),
};

function importBeside(file) {
  // The worker's own address: a bundler may rewrite `import.meta.url` (webpack makes it the
  // source file's path at build time), never `self.location`.
  const url = new URL(file, self.location.href).href;
  return import(/* @vite-ignore */ /* webpackIgnore: true */ url);
}

// Int32Array over a SharedArrayBuffer when the page is cross-origin isolated: slot id % length
// holds id once request id is cancelled (read without waiting for the event loop).
let cancelFlags = null;
const cancelledByMessage = new Set(); // ids, effective at the next await without the flags
let queue = Promise.resolve();
// Classifications waiting for a place in the batch: {id, text, maxNewTokens, mode, threshold}.
const waiting = [];
const inBatch = new Set(); // ids the running batch has taken
let batchQueued = false;

const post = (msg) => self.postMessage(msg);

/** Whether this browser runs relaxed-SIMD (`i32x4.relaxed_dot_i8x16_i7x16_add_s`): a module of
 * one function that uses it, validated. */
function hasRelaxedSimd() {
  const zero = [0xfd, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
  const body = [0x00, ...zero, ...zero, ...zero, 0xfd, 0x93, 0x02, 0x0b];
  const header = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const types = [0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b]; // () -> v128
  const code = [0x0a, body.length + 2, 0x01, body.length, ...body];
  return WebAssembly.validate(new Uint8Array([...header, ...types, 0x03, 0x02, 0x01, 0x00, ...code]));
}

/** Starts the wasm module for a load on `onCpu` with `wanted` threads (0: one per core);
 * `relaxed` false keeps the threaded build without relaxed-SIMD (comparisons). */
async function start(onCpu, wanted, relaxed) {
  if (wasm) return;
  const cores = self.navigator.hardwareConcurrency || 1;
  const n = Math.max(1, Math.min(wanted || cores, cores, DEFAULTS.maxThreads));
  // Threads need SharedArrayBuffer, which only a cross-origin isolated page has (COOP
  // same-origin + COEP require-corp). WebGPU runs single-threaded: its work is on the GPU.
  const threaded = onCpu && n > 1 && self.crossOriginIsolated === true && typeof SharedArrayBuffer === "function";
  if (threaded) {
    const builds = relaxed !== false && hasRelaxedSimd() ? ["pkg-threads-relaxed", "pkg-threads"] : ["pkg-threads"];
    for (const build of builds) {
      try {
        const module = await BUILDS[build]();
        await module.default();
        await module.initThreadPool(n);
        [wasm, threads] = [module, n];
        return;
      } catch (e) {
        // A site that serves pkg/ only (or a browser that refuses the workers): the next build.
        console.warn(`the ${build} wasm build did not start (${e?.message ?? e})`);
      }
    }
  }
  const module = await BUILDS.pkg();
  await module.default();
  [wasm, threads] = [module, 1];
}

function isCancelled(id) {
  return cancelledByMessage.has(id) || (cancelFlags !== null && Atomics.load(cancelFlags, id % cancelFlags.length) === id);
}

/** Runs every waiting classification, the session's batch at a time; ones that arrive while it
 * runs join it (on WebGPU the run yields at each step's readback; the wasm CPU path does not, so
 * there they wait for the next batch). */
async function runBatch() {
  // Let requests posted together (moderateMany) all arrive before the batch starts.
  await new Promise((resolve) => setTimeout(resolve, 0));
  try {
    while (waiting.length > 0) {
      if (!session) throw new Error("no model is loaded");
      const next = () => {
        const item = waiting.shift();
        if (!item) return null;
        inBatch.add(item.id);
        return { index: item.id, text: item.text, maxNewTokens: item.maxNewTokens, mode: item.mode, threshold: item.threshold };
      };
      const onEvent = (id, event) => post({ id, type: Reply.event, event });
      const onDone = (id, result, error) => {
        inBatch.delete(id);
        cancelledByMessage.delete(id);
        if (error !== undefined) post({ id, type: Reply.error, message: error });
        else if (result.stop === "cancelled") post({ id, type: Reply.error, message: "cancelled" });
        else post({ id, type: Reply.result, ...result });
      };
      await session.classify_many(DEFAULTS.maxNewTokens, next, onEvent, onDone, isCancelled);
    }
  } catch (e) {
    // The batch failed as a whole (not one item's prompt): every classification in it or
    // waiting fails with the message, and the worker goes on.
    const message = String(e && e.message ? e.message : e);
    for (const id of [...inBatch, ...waiting.splice(0).map((w) => w.id)]) post({ id, type: Reply.error, message });
    inBatch.clear();
  } finally {
    batchQueued = false;
  }
}

// Progress of one file's download: bytes (resumed ones included), rate and ETA of this session.
function downloadProgress(id, label) {
  const started = performance.now();
  return (loaded, total, resumedFrom) => {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? (loaded - resumedFrom) / seconds : 0;
    const eta = total && rate ? (total - loaded) / rate : null;
    post({ id, type: Reply.progress, phase: "download", file: label, loaded, total, rate, eta, resumedFrom });
  };
}

function isGguf(name) {
  return /\.gguf($|\?)/i.test(name);
}

/** The commit a Hub revision names, pinned in OPFS: online the Hub is asked each time (a new
 * commit means new files, never spliced with the old); offline the last pin is used. */
async function pinnedCommit(repo, revision, endpoint) {
  const key = `${endpoint}/${repo}@${revision}`;
  try {
    const response = await fetch(hubRevisionUrl(repo, revision, endpoint));
    if (response.ok) {
      const { sha } = await response.json();
      if (/^[0-9a-f]{40}$/i.test(sha ?? "")) {
        await pins.save(key, sha);
        return sha;
      }
    } else if (response.status === 401 || response.status === 404) {
      throw new StorageError(`${repo}: no such model or revision \`${revision}\` on ${endpoint} (HTTP ${response.status})`);
    }
  } catch (e) {
    if (e instanceof StorageError) throw e;
  }
  const pinned = await pins.load(key);
  if (!pinned) throw new Error(`${repo}: cannot reach ${endpoint} to resolve revision \`${revision}\`, and nothing of it is stored`);
  return pinned;
}

// Resolve a source ({url} | {hf, revision?, hfEndpoint?} | {file} | {hfBaseUrl}) to the files
// load_model takes. Every file is stored in OPFS and read through a sync access handle; the
// returned `release()` closes them (and deletes temporary ones) once the model has loaded.
async function resolveFiles(source, id, quotaOverride) {
  const keep = source.cache !== false;
  const opened = [];
  const release = () => Promise.all(opened.map((f) => f.release()));
  const store = async (url, label) => {
    const file = await storedFile(url, label, {
      keep,
      quotaOverride,
      onProgress: downloadProgress(id, label),
      onCached: () => post({ id, type: Reply.progress, phase: "cache", file: label, loaded: 1, total: 1 }),
    });
    opened.push(file);
    return file.source;
  };
  try {
    if (source.file) {
      if (!isGguf(source.file.name)) throw new Error(`${source.file.name}: pick a .gguf file`);
      const label = source.file.name;
      const file = await storedUpload(source.file, { quotaOverride, onProgress: (loaded, total) => post({ id, type: Reply.progress, phase: "copy", file: label, loaded, total }) });
      opened.push(file);
      return { files: { kind: "gguf", source: file.source }, release };
    }
    if (source.url && isGguf(source.url)) {
      return { files: { kind: "gguf", source: await store(source.url, source.url.split("/").pop()) }, release };
    }
    let base = source.hfBaseUrl || source.url;
    if (source.hf) {
      // Without a trailing slash: the paths below start with one ("https://host/" is what a
      // page-relative endpoint becomes).
      const endpoint = (source.hfEndpoint || HUB_ENDPOINT).replace(/\/+$/, "");
      base = hubBaseUrl(source.hf, await pinnedCommit(source.hf, source.revision || "main", endpoint), endpoint);
    }
    if (!base) throw new Error("no model source given (a .gguf URL, a Hugging Face repo id or a file)");
    const root = base.endsWith("/") ? base : base + "/";
    const bytes = async (name, optional = false) => {
      try {
        const src = await store(root + name, name);
        return src.read(0, src.size);
      } catch (e) {
        if (optional && !(e instanceof StorageError && /storage/.test(e.message))) return undefined;
        throw e;
      }
    };
    const text = async (name, optional) => {
      const b = await bytes(name, optional);
      return b === undefined ? undefined : new TextDecoder().decode(b);
    };
    const config = await text(HF_FILES.config);
    const generation_config = await text(HF_FILES.generationConfig, true);
    const tokenizer = await bytes(HF_FILES.tokenizer);
    const index = await text(HF_FILES.shardIndex, true);
    const names = index ? [...new Set(Object.values(JSON.parse(index).weight_map))].sort() : [HF_FILES.singleShard];
    const shards = [];
    for (const name of names) shards.push(await store(root + name, name));
    return { files: { kind: "hf", config, generation_config, tokenizer, shards }, release };
  } catch (e) {
    await release();
    throw e;
  }
}

/** Whether the adapter a load would get is the browser's fallback (a GPU emulated on the CPU,
 * such as SwiftShader). */
async function isFallbackAdapter() {
  const adapter = await self.navigator.gpu.requestAdapter({ powerPreference: "high-performance" }).catch(() => null);
  return Boolean(adapter && (adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter));
}

async function handle(msg) {
  const { id, type } = msg;
  try {
    if (type === Request.load) {
      // The core picks the device ("auto": a real GPU, else the CPU, saying why) and refuses
      // unknown words. Decided here, before the wasm build is chosen (threads, batch): a browser
      // without WebGPU, and one whose only adapter is a fallback that emulates a GPU on the CPU
      // (slower than the CPU path), unless a test hook makes the GPU fail on purpose.
      const wanted = msg.backend || DEFAULTS.backend;
      const noWebGpu = wanted === "auto" && !self.navigator.gpu;
      const hooked = msg.testRefuseGpuBuffer === true || msg.gpuBufferLimit != null;
      const emulated = wanted === "auto" && !noWebGpu && !hooked && (await isFallbackAdapter());
      const onCpu = noWebGpu || emulated || wanted === "cpu";
      await start(onCpu, msg.threads, msg.relaxedSimd);
      const { files, release } = await resolveFiles(msg.source, id, msg.quotaOverride);
      // On the wasm CPU path one conversation at a time unless asked: its KV caches share
      // 4 GiB with the weights.
      const batch = msg.batch || (onCpu ? 1 : DEFAULTS.batch);
      try {
        const options = {
          backend: onCpu ? "cpu" : wanted,
          quant: msg.quant || DEFAULTS.quant,
          context: msg.context || DEFAULTS.context,
          batch,
          gpuBufferLimit: msg.gpuBufferLimit ?? undefined,
          refuseGpuBuffer: msg.testRefuseGpuBuffer === true,
        };
        session = await wasm.load_model(files, options, (loaded, total) => post({ id, type: Reply.progress, phase: "load", loaded, total }));
      } finally {
        await release(); // the weights are in wasm or GPU memory now (or the load failed)
      }
      const fallback = noWebGpu
        ? "WebGPU is not available in this browser: running on the CPU"
        : emulated
          ? 'the browser\'s only WebGPU adapter is a fallback that emulates a GPU on the CPU, slower than the CPU path: running on the CPU (ask for backend "webgpu" to use it)'
          : (session.fallback() ?? null);
      post({ id, type: Reply.result, backend: session.backend(), fallback, modelIdentity: session.model_identity(), batch: session.batch(), threads });
    } else if (type === Request.cancelFlag) {
      cancelFlags = new Int32Array(msg.buffer);
    } else {
      if (!session) throw new Error("no model is loaded");
      if (type === Request.tokenize) {
        post({ id, type: Reply.result, ids: Array.from(session.tokenize(msg.text)) });
      } else if (type === Request.generate) {
        const onToken = (tokenId, text) => post({ id, type: Reply.token, token: tokenId, text });
        const out = await session.generate(Uint32Array.from(msg.ids), msg.maxNewTokens ?? DEFAULTS.generateMaxNewTokens, onToken, () => isCancelled(id));
        cancelledByMessage.delete(id);
        post({ id, type: Reply.result, ...out });
      } else if (type === Request.verdictSpeedTest) {
        const text = msg.prompt === undefined ? undefined : wasm.moderation_prompt(msg.prompt, msg.response ?? undefined);
        post({ id, type: Reply.result, ...(await session.verdict_speed_test(text)) });
      } else if (type === Request.speedTest) {
        post({ id, type: Reply.result, ...(await session.speed_test(Uint32Array.from(msg.ids), msg.newTokens)) });
      } else {
        throw new Error(`unknown request ${type}`);
      }
    }
  } catch (e) {
    post({ id, type: Reply.error, message: String(e && e.message ? e.message : e) });
  }
}

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === Request.cancel) {
    cancelledByMessage.add(msg.id); // effective at the next await when the page is not isolated
    return;
  }
  if (msg.type === Request.loseGpu) {
    // At once, not queued: the point is to lose the device in the middle of a run.
    post({ id: msg.id, type: Reply.result, lost: session?.lose_gpu_device() ?? false });
    return;
  }
  if (msg.type === Request.moderate || msg.type === Request.classify) {
    // Joins the batch running now if there is one (it takes waiting items as places free up),
    // else the next batch, queued behind any load or generate before it.
    let text;
    try {
      text = msg.type === Request.moderate ? wasm.moderation_prompt(msg.prompt, msg.response ?? undefined) : msg.text;
      if (msg.threshold !== undefined) wasm.check_threshold(msg.threshold);
    } catch (err) {
      post({ id: msg.id, type: Reply.error, message: session ? String(err?.message ?? err) : "no model is loaded" });
      return;
    }
    waiting.push({ id: msg.id, text, maxNewTokens: msg.maxNewTokens ?? DEFAULTS.maxNewTokens, mode: msg.mode, threshold: msg.threshold });
    if (!batchQueued) {
      batchQueued = true;
      queue = queue.then(runBatch);
    }
    return;
  }
  // One request at a time, in order.
  queue = queue.then(() => handle(msg));
};
