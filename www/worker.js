// The Web Worker that owns the model: loads the wasm module, resolves a model source to files
// (download with progress into Cache Storage, or a picked File), and runs one request at a time.
// Protocol (www/protocol.js): requests {id, type, ...}; replies {id, type, ...}.
import init, { load_model } from "../pkg/guardreasoner.js";
import { CACHE_NAME, DEFAULTS, HF_FILES, Reply, Request, hubBaseUrl } from "./protocol.js";

const MAX_RETRIES = 3;
let session = null; // the wasm Session
let cancelFlag = null; // Int32Array over a SharedArrayBuffer when the page is cross-origin isolated
let cancelledByMessage = false;
let queue = Promise.resolve();

const post = (msg) => self.postMessage(msg);

function isCancelled() {
  return cancelFlag ? Atomics.load(cancelFlag, 0) === 1 : cancelledByMessage;
}

// A synchronous reader over a Blob: the wasm side reads one tensor at a time.
function blobSource(name, blob) {
  const reader = new FileReaderSync();
  return {
    name,
    size: blob.size,
    read: (offset, length) => new Uint8Array(reader.readAsArrayBuffer(blob.slice(offset, offset + length))),
  };
}

async function fetchWithRetry(url, onBytes) {
  let lastError = null;
  for (let attempt = 0; attempt < MAX_RETRIES; attempt++) {
    try {
      const response = await fetch(url);
      if (!response.ok) {
        const err = new Error(`HTTP ${response.status} for ${url}`);
        err.permanent = response.status >= 400 && response.status < 500;
        throw err;
      }
      const total = Number(response.headers.get("content-length")) || 0;
      const reader = response.body.getReader();
      const parts = [];
      let loaded = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        loaded += value.length;
        onBytes(loaded, total);
      }
      if (total && loaded !== total) throw new Error(`download of ${url} stopped at ${loaded} of ${total} bytes`);
      return new Blob(parts, { type: response.headers.get("content-type") || "application/octet-stream" });
    } catch (e) {
      lastError = e;
      if (e.permanent) break;
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
  throw lastError;
}

// A file as a Blob: from Cache Storage when present, else downloaded (with progress) and cached.
async function cachedBlob(url, label, id, useCache = true) {
  const cache = useCache && typeof caches !== "undefined" ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = cache && (await cache.match(url));
  if (hit) {
    post({ id, type: Reply.progress, phase: "cache", file: label, loaded: 1, total: 1 });
    return hit.blob();
  }
  const started = performance.now();
  const blob = await fetchWithRetry(url, (loaded, total) => {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? loaded / seconds : 0;
    const eta = total && rate ? (total - loaded) / rate : null;
    post({ id, type: Reply.progress, phase: "download", file: label, loaded, total, rate, eta });
  });
  if (cache) {
    try {
      await cache.put(url, new Response(blob));
    } catch (e) {
      post({ id, type: Reply.progress, phase: "cache-full", file: label, message: `not cached (${e.name}): storage quota too small; the model still runs` });
    }
  }
  return blob;
}

function isGguf(name) {
  return /\.gguf($|\?)/i.test(name);
}

// Resolve a source ({url} | {hf} | {file} | {hfBaseUrl}) to the files load_model takes.
async function resolveFiles(source, id) {
  const useCache = source.cache !== false;
  if (source.file) {
    if (!isGguf(source.file.name)) throw new Error(`${source.file.name}: pick a .gguf file`);
    return { kind: "gguf", source: blobSource(source.file.name, source.file) };
  }
  if (source.url && isGguf(source.url)) {
    const blob = await cachedBlob(source.url, source.url.split("/").pop(), id, useCache);
    return { kind: "gguf", source: blobSource(source.url, blob) };
  }
  const base = source.hfBaseUrl || (source.hf && hubBaseUrl(source.hf)) || source.url;
  if (!base) throw new Error("no model source given (a .gguf URL, a Hugging Face repo id or a file)");
  const root = base.endsWith("/") ? base : base + "/";
  const text = async (name, optional = false) => {
    try {
      return await (await cachedBlob(root + name, name, id, useCache)).text();
    } catch (e) {
      if (optional) return undefined;
      throw e;
    }
  };
  const config = await text(HF_FILES.config);
  const generation_config = await text(HF_FILES.generationConfig, true);
  const tokenizer = new Uint8Array(await (await cachedBlob(root + HF_FILES.tokenizer, HF_FILES.tokenizer, id, useCache)).arrayBuffer());
  const index = await text(HF_FILES.shardIndex, true);
  const names = index ? [...new Set(Object.values(JSON.parse(index).weight_map))].sort() : [HF_FILES.singleShard];
  const shards = [];
  for (const name of names) shards.push(blobSource(name, await cachedBlob(root + name, name, id, useCache)));
  return { kind: "hf", config, generation_config, tokenizer, shards };
}

async function handle(msg) {
  const { id, type } = msg;
  try {
    if (type === Request.load) {
      await init();
      const files = await resolveFiles(msg.source, id);
      // The core picks the device ("auto": WebGPU, else the CPU, saying why) and refuses unknown
      // words; only a browser without WebGPU at all is decided here.
      const wanted = msg.backend || DEFAULTS.backend;
      const noWebGpu = wanted === "auto" && !self.navigator.gpu;
      session = await load_model(files, noWebGpu ? "cpu" : wanted, msg.quant || DEFAULTS.quant, msg.context || DEFAULTS.context, (loaded, total) =>
        post({ id, type: Reply.progress, phase: "load", loaded, total }),
      );
      const fallback = noWebGpu ? "WebGPU is not available in this browser: running on the CPU" : (session.fallback() ?? null);
      post({ id, type: Reply.result, backend: session.backend(), fallback, modelIdentity: session.model_identity() });
    } else if (type === Request.cancelFlag) {
      cancelFlag = new Int32Array(msg.buffer);
    } else {
      if (!session) throw new Error("no model is loaded");
      cancelledByMessage = false;
      const onEvent = (event) => post({ id, type: Reply.event, event });
      if (type === Request.tokenize) {
        post({ id, type: Reply.result, ids: Array.from(session.tokenize(msg.text)) });
      } else if (type === Request.generate) {
        const onToken = (tokenId, text) => post({ id, type: Reply.token, token: tokenId, text });
        const out = await session.generate(Uint32Array.from(msg.ids), msg.maxNewTokens ?? DEFAULTS.generateMaxNewTokens, onToken, isCancelled);
        post({ id, type: Reply.result, ...out });
      } else if (type === Request.moderate) {
        const out = await session.moderate(msg.prompt, msg.response ?? undefined, msg.maxNewTokens ?? DEFAULTS.maxNewTokens, onEvent, isCancelled);
        post({ id, type: Reply.result, ...out });
      } else if (type === Request.classify) {
        const out = await session.classify(msg.text, msg.maxNewTokens ?? DEFAULTS.maxNewTokens, onEvent, isCancelled);
        post({ id, type: Reply.result, ...out });
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
    cancelledByMessage = true; // effective at the next await when the page is not isolated
    return;
  }
  // One request at a time, in order.
  queue = queue.then(() => handle(msg));
};
