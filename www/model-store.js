// Model files in the Origin Private File System, for the worker. A download streams from the
// response body straight into an OPFS file (never whole into JS memory), resumes after a break
// with an HTTP Range request, and is checked against the storage quota first; the wasm side then
// reads the file through a synchronous access handle, at any offset. A picked File and the
// evaluator's local models take the same path, as temporary files deleted after loading.
// Why OPFS and not Cache Storage: see ARCHITECTURE.md §6.

import { MODELS_DIR } from "./protocol.js";

/** Attempts in a row that bring no new byte before a download gives up (one that progresses
 * goes on through any number of breaks, each resumed where it stopped). */
const MAX_FRUITLESS_ATTEMPTS = 3;
const FIRST_RETRY_MS = 500;
/** Progress is posted at most this often. */
const PROGRESS_MS = 100;
/** Bytes written between flushes, so a crash loses little. */
const FLUSH_BYTES = 64 << 20;
const TEMP_DIR = "temporary";

/** A failure the user must act on (quota, 4xx): not retried. */
export class StorageError extends Error {}

async function folder(...names) {
  let dir = await navigator.storage.getDirectory();
  for (const name of names) dir = await dir.getDirectoryHandle(name, { create: true });
  return dir;
}

/** A file name for a URL: the SHA-256 of the URL (OPFS names cannot hold "/"). */
async function keyOf(url) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(url));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** What we know of a stored file: `{url, size, validator, complete}` (a small JSON beside it). */
async function readMeta(dir, key) {
  try {
    const file = await (await dir.getFileHandle(`${key}.json`)).getFile();
    return JSON.parse(await file.text());
  } catch {
    return null;
  }
}

async function writeMeta(dir, key, meta) {
  const handle = await (await dir.getFileHandle(`${key}.json`, { create: true })).createSyncAccessHandle();
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(meta));
    handle.truncate(0);
    handle.write(bytes, { at: 0 });
    handle.flush();
  } finally {
    handle.close();
  }
}

/** A sync access handle, waiting up to about 2 s for one a just-ended worker still holds (a
 * cancelled load releases its handles when the browser ends that worker, a moment later). */
async function openSync(fileHandle, name) {
  for (let wait = 50; ; wait *= 2) {
    try {
      return await fileHandle.createSyncAccessHandle();
    } catch (e) {
      if (e.name !== "NoModificationAllowedError") throw e;
      if (wait > 1000) throw new StorageError(`${name} is in use by another tab or worker; close it and try again`);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

async function forget(dir, key) {
  await dir.removeEntry(key).catch(() => {});
  await dir.removeEntry(`${key}.json`).catch(() => {});
}

/** Writes `stream` into `handle` from `offset` chunk by chunk (flushed every FLUSH_BYTES and at
 * the end), reporting the offset at most every PROGRESS_MS; resolves to the end offset. On an
 * error, what was written stays for a resume (`handle.getSize()`). */
async function streamInto(handle, stream, offset, onOffset) {
  const reader = stream.getReader();
  let unflushed = 0;
  let shown = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      handle.write(value, { at: offset });
      offset += value.length;
      unflushed += value.length;
      if (unflushed >= FLUSH_BYTES) handle.flush(), (unflushed = 0);
      if (performance.now() - shown > PROGRESS_MS) shown = performance.now(), onOffset(offset);
    }
  } finally {
    handle.flush();
  }
  onOffset(offset);
  return offset;
}

/** The reused buffer of `readInto` where a view of shared wasm memory is refused. */
const READ_CHUNK_BYTES = 8 * 2 ** 20;

/** A byte source for the wasm side over an open sync access handle. */
export function handleSource(name, handle) {
  let sharedRefused = false;
  let scratch = null;
  return {
    name,
    size: handle.getSize(),
    read(offset, length) {
      const buf = new Uint8Array(length);
      const n = handle.read(buf, { at: offset });
      return n === length ? buf : buf.subarray(0, n); // a short read is reported by the wasm side
    },
    /** Straight into `view`, a view of wasm memory (no copy of the bytes in JS); bytes read. A
     * view of shared memory (the threaded build) that the handle refuses goes through one reused
     * buffer instead. */
    readInto(view, offset) {
      if (!sharedRefused) {
        try {
          return handle.read(view, { at: offset });
        } catch (e) {
          if (!(view.buffer instanceof SharedArrayBuffer)) throw e;
          sharedRefused = true;
        }
      }
      scratch ??= new Uint8Array(READ_CHUNK_BYTES);
      let done = 0;
      while (done < view.length) {
        const n = handle.read(scratch.subarray(0, Math.min(READ_CHUNK_BYTES, view.length - done)), { at: offset + done });
        if (n === 0) break;
        view.set(scratch.subarray(0, n), done);
        done += n;
      }
      return done;
    },
  };
}

const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;

/** Refuses a download that the origin's storage quota cannot hold, with the numbers. */
async function checkQuota(needed, label, quotaOverride) {
  const { usage = 0, quota = Infinity } = (await navigator.storage.estimate?.()) ?? {};
  const limit = quotaOverride ?? quota;
  if (needed > limit - usage) {
    throw new StorageError(
      `not enough browser storage for ${label}: it needs ${mib(needed)} more, and ${mib(Math.max(0, limit - usage))} of this site's ${mib(limit)} are free; free space (the demo's cache panel clears stored models) or use a smaller model`,
    );
  }
}

/** The total size from a 200 or 206 response, or null when the server does not say. */
function totalSize(response, offset) {
  const range = /\/(\d+)\s*$/.exec(response.headers.get("content-range") || "");
  if (range) return Number(range[1]);
  const length = response.headers.get("content-length");
  return length === null ? null : offset + Number(length);
}

/**
 * Downloads `url` into `fileHandle`, continuing from what is already there when the stored bytes
 * came from the same version (`If-Range` with the validator: a changed file comes back whole,
 * never spliced). `onProgress(loaded, total, resumedFrom)`. Resolves to the completed meta.
 */
async function download(dir, key, fileHandle, url, label, { onProgress, quotaOverride, fetchOptions }) {
  const handle = await openSync(fileHandle, label);
  let meta = (await readMeta(dir, key)) ?? { url, size: null, validator: null, complete: false };
  let offset = meta.validator ? handle.getSize() : 0;
  let lastError = null;
  let quotaChecked = false;
  let fruitless = 0;
  try {
    while (fruitless < MAX_FRUITLESS_ATTEMPTS) {
      const resumedFrom = offset;
      try {
        const headers = offset > 0 ? { Range: `bytes=${offset}-`, ...(meta.validator && { "If-Range": meta.validator }) } : {};
        const response = await fetch(url, { ...fetchOptions, headers: { ...fetchOptions?.headers, ...headers } });
        if (response.status === 416 && offset > 0 && offset === meta.size) break; // all there already
        if (!response.ok) {
          const err = new (response.status >= 400 && response.status < 500 ? StorageError : Error)(`HTTP ${response.status} for ${url}`);
          throw err;
        }
        if (offset > 0 && response.status !== 206) offset = 0; // ranges ignored, or the file changed: start over
        const total = totalSize(response, offset);
        if (!quotaChecked && total !== null) {
          await checkQuota(total - offset, label, quotaOverride);
          quotaChecked = true;
        }
        const validator = response.headers.get("etag") || response.headers.get("last-modified");
        meta = { url, size: total, validator, complete: false };
        await writeMeta(dir, key, meta);
        handle.truncate(offset);
        offset = await streamInto(handle, response.body, offset, (at) => onProgress(at, total, resumedFrom));
        if (total !== null && offset !== total) throw new Error(`download of ${url} stopped at ${offset} of ${total} bytes`);
        meta = { ...meta, size: offset, complete: true };
        await writeMeta(dir, key, meta);
        return meta;
      } catch (e) {
        lastError = e;
        if (e instanceof StorageError) throw e;
        offset = handle.getSize(); // what reached the disk: the next attempt asks for the rest
        handle.flush();
        fruitless = offset > resumedFrom ? 0 : fruitless + 1;
        if (fruitless > 0) await new Promise((r) => setTimeout(r, FIRST_RETRY_MS * 2 ** (fruitless - 1)));
      }
    }
    if (meta.size !== null && offset === meta.size) {
      meta = { ...meta, complete: true };
      await writeMeta(dir, key, meta);
      return meta;
    }
    throw lastError ?? new Error(`download of ${url} failed`);
  } finally {
    handle.close();
  }
}

/**
 * A model file by URL, stored in OPFS (downloaded, or resumed, when not complete there). With
 * `keep: false` it goes to a temporary folder and `release()` deletes it. Resolves to `{source,
 * release}`: `source` is the wasm side's byte source; `release()` closes (and for temporary files
 * deletes) it once the model has loaded.
 */
export async function storedFile(url, label, { keep = true, onProgress, onCached, quotaOverride, fetchOptions } = {}) {
  const dir = await folder(MODELS_DIR, ...(keep ? [] : [TEMP_DIR]));
  const key = await keyOf(url);
  const fileHandle = await dir.getFileHandle(key, { create: true });
  const meta = await readMeta(dir, key);
  if (keep && meta?.complete && (await fileHandle.getFile()).size === meta.size) onCached?.();
  else {
    try {
      await download(dir, key, fileHandle, url, label, { onProgress, quotaOverride, fetchOptions });
    } catch (e) {
      // Keep a partial file for the next attempt to resume; forget one with nothing in it (a
      // 404, a refused quota), so it is neither counted nor mistaken for a download.
      if ((await fileHandle.getFile()).size === 0) await forget(dir, key);
      throw e;
    }
  }
  const handle = await openSync(fileHandle, label);
  return {
    source: handleSource(url, handle),
    release: async () => {
      handle.close();
      if (!keep) await forget(dir, key);
    },
  };
}

/** A picked File copied into a temporary OPFS file (streamed, never whole in memory). */
export async function storedUpload(file, { onProgress, quotaOverride } = {}) {
  const dir = await folder(MODELS_DIR, TEMP_DIR);
  const key = await keyOf(`file:${file.name}:${file.size}:${file.lastModified}`);
  const fileHandle = await dir.getFileHandle(key, { create: true });
  await checkQuota(file.size, file.name, quotaOverride);
  const handle = await openSync(fileHandle, file.name);
  try {
    handle.truncate(0);
    await streamInto(handle, file.stream(), 0, (at) => onProgress?.(at, file.size));
  } catch (e) {
    handle.close();
    await dir.removeEntry(key).catch(() => {});
    throw e;
  }
  return {
    source: handleSource(file.name, handle),
    release: async () => {
      handle.close();
      await dir.removeEntry(key).catch(() => {});
    },
  };
}

/** Which commit each Hub revision was resolved to (`pins.json`): offline loads use the last. */
export const pins = {
  async load(key) {
    return (await readMeta(await folder(MODELS_DIR), "pins"))?.[key] ?? null;
  },
  async save(key, sha) {
    const dir = await folder(MODELS_DIR);
    const all = (await readMeta(dir, "pins")) ?? {};
    if (all[key] !== sha) await writeMeta(dir, "pins", { ...all, [key]: sha });
  },
};

/** What is stored: `{files, bytes}` of complete model files. */
export async function storedSummary() {
  const dir = await folder(MODELS_DIR);
  let files = 0;
  let bytes = 0;
  for await (const [name, entry] of dir.entries()) {
    if (entry.kind !== "file" || name.endsWith(".json")) continue;
    files += 1;
    bytes += (await entry.getFile()).size;
  }
  return { files, bytes };
}

/** Deletes every stored model file. */
export async function clearStored() {
  const root = await navigator.storage.getDirectory();
  await root.removeEntry(MODELS_DIR, { recursive: true }).catch(() => {});
}
