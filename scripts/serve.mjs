#!/usr/bin/env node
// Static server on 127.0.0.1 with the cross-origin isolation headers wasm threads and
// SharedArrayBuffer need, and a strict Content-Security-Policy (contentSecurityPolicy below). Serves the repository root (the demo is /www/, the wasm packages /www/pkg*/)
// and, for the evaluator, local model files mounted under a URL prefix.
// Usage: node scripts/serve.mjs [--port N] [--root DIR]   (port 0 picks a free one)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".ts": "text/plain; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

const HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
  "Cache-Control": "no-cache",
};

/** Where a page may connect besides itself: the Hugging Face Hub (its API and the hosts its
 * downloads redirect to). */
const HUB_ORIGINS = ["https://huggingface.co", "https://*.huggingface.co", "https://*.hf.co"];

/** The origin of the model URL the user chose (`?model=` of the page, or of the page that asked,
 * through its Referer, for the page's workers), when it is an http(s) URL elsewhere. */
function chosenModelOrigins(req) {
  const origins = new Set();
  for (const url of [req.url, req.headers.referer]) {
    try {
      const model = new URL(url ?? "", "http://localhost").searchParams.get("model");
      const chosen = model && new URL(model);
      // Only a plain host name or address: `*` or other source-expression syntax in a crafted
      // address must not widen the policy.
      const plainHost = chosen && (/^[a-z0-9.-]+$/i.test(chosen.hostname) || /^\[[0-9a-f:.]+\]$/i.test(chosen.hostname));
      if (chosen && /^https?:$/.test(chosen.protocol) && plainHost) origins.add(chosen.origin);
    } catch {
      // not a URL: a Hub id or nothing, allowed already
    }
  }
  return [...origins];
}

/** No inline script or style, no plugins, no framing; scripts and workers from this origin only
 * (wasm compiled with 'wasm-unsafe-eval'; the thread pool's workers start from same-origin
 * blob: URLs); requests only to this origin, the Hub and the model host the user chose. */
export function contentSecurityPolicy(req) {
  const connect = ["'self'", ...HUB_ORIGINS, ...chosenModelOrigins(req)].join(" ");
  return [
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self' blob:",
    `connect-src ${connect}`,
    "img-src 'self' data:",
    "style-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join("; ");
}

/** The file a URL path names: under a mount or the root; null when it would leave them. */
function resolve(pathname, root, mounts) {
  for (const [prefix, target] of Object.entries(mounts)) {
    if (!prefix.endsWith("/")) {
      if (pathname === prefix) return target; // a mounted file
      continue;
    }
    if (pathname.startsWith(prefix)) {
      const file = path.join(target, path.normalize("/" + pathname.slice(prefix.length)));
      return file === target || file.startsWith(target + path.sep) ? file : null;
    }
  }
  const file = path.join(root, path.normalize(pathname));
  return file === root || file.startsWith(root + path.sep) ? file : null;
}

/** The byte range a `Range: bytes=a-b` header asks of a file of `size` bytes, or null for all. */
function byteRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header || "");
  if (!m || (m[1] === "" && m[2] === "")) return null;
  const start = m[1] === "" ? Math.max(0, size - Number(m[2])) : Number(m[1]);
  const end = m[1] === "" || m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  return { start, end };
}

/**
 * Start the server. Resolves to `{url, requests, close()}` once it listens (`url` without a
 * trailing slash; `requests`: `{method, path, range}` of every request, for tests).
 * `mounts`: a URL prefix ending in "/" to an absolute folder, or a URL path to one absolute file.
 * `faults` (tests only), for paths under `faults.under`: `{dropAfterBytes, drops}` cuts the
 * connection after that many body bytes, `drops` times in all; `ignoreRanges` answers every
 * request whole, as a server without range support does; `unavailable` (a Set of paths) answers
 * them 503, as a server that is down; `{stallAfterBytes, stalls}` sends that many body bytes and
 * then nothing more while holding the connection open, `stalls` times (a download to cancel).
 * `isolated: false` leaves out the cross-origin isolation
 * headers; `csp: false` the Content-Security-Policy (a page with an inline import map, for tests).
 */
export function startServer({ root = REPO, port = 0, mounts = {}, faults = {}, isolated = true, csp = true } = {}) {
  // Cross-origin isolation (COOP + COEP) gives pages SharedArrayBuffer: wasm threads and the
  // shared cancel flags. `isolated: false` serves as a site without those headers (tests).
  const base = isolated ? HEADERS : { "Cache-Control": HEADERS["Cache-Control"] };
  const requests = [];
  let dropsLeft = faults.drops ?? 0;
  let stallsLeft = faults.stalls ?? 0;
  root = path.resolve(root);
  const server = http.createServer((req, res) => {
    try {
      handle(req, res);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500, base);
      res.end(`server error: ${e.message}`);
    }
  });
  const handle = (req, res) => {
    if (csp) res.setHeader("Content-Security-Policy", contentSecurityPolicy(req));
    // Only this machine's names: a page elsewhere that rebinds its DNS name to 127.0.0.1 must
    // not read these files.
    const host = (req.headers.host || "").replace(/:\d+$/, "");
    if (!["127.0.0.1", "localhost", "[::1]"].includes(host)) {
      res.writeHead(403, base).end("forbidden host");
      return;
    }
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    } catch {
      res.writeHead(400, base).end("bad request");
      return;
    }
    requests.push({ method: req.method, path: pathname, range: req.headers.range ?? null });
    if (pathname.includes("\0")) {
      res.writeHead(400, base).end("bad request");
      return;
    }
    if (faults.unavailable?.has(pathname)) {
      res.writeHead(503, base).end("unavailable");
      return;
    }
    if (pathname === "/") {
      res.writeHead(302, { ...base, Location: "/www/" }).end();
      return;
    }
    const file = resolve(pathname, root, mounts);
    if (!file) {
      res.writeHead(403, base).end("forbidden");
      return;
    }
    const target = fs.existsSync(file) && fs.statSync(file).isDirectory() ? path.join(file, "index.html") : file;
    fs.stat(target, (err, stat) => {
      if (err || !stat.isFile()) {
        res.writeHead(404, { ...base, "Content-Type": "text/plain" }).end(`not found: ${pathname}`);
        return;
      }
      const faulty = faults.under !== undefined && pathname.startsWith(faults.under);
      const etag = `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
      const headers = { ...base, "Content-Type": TYPES[path.extname(target)] || "application/octet-stream", "Accept-Ranges": faulty && faults.ignoreRanges ? "none" : "bytes", ETag: etag, "Last-Modified": stat.mtime.toUTCString() };
      // A range is served only while the client's copy is of this version (If-Range).
      const ifRange = req.headers["if-range"];
      const range = (faulty && faults.ignoreRanges) || (ifRange && ifRange !== etag) ? null : byteRange(req.headers.range, stat.size);
      if (range && (range.start >= stat.size || range.start > range.end)) {
        res.writeHead(416, { ...headers, "Content-Range": `bytes */${stat.size}` }).end();
        return;
      }
      const { start, end } = range ?? { start: 0, end: stat.size - 1 };
      if (range) res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${stat.size}`, "Content-Length": end - start + 1 });
      else res.writeHead(200, { ...headers, "Content-Length": stat.size });
      if (req.method === "HEAD" || stat.size === 0) return res.end();
      const stall = faulty && stallsLeft > 0 && faults.stallAfterBytes < end - start + 1;
      if (stall) {
        stallsLeft -= 1;
        const head = fs.createReadStream(target, { start, end: start + faults.stallAfterBytes - 1 });
        head.on("error", () => res.destroy());
        head.pipe(res, { end: false }); // and then nothing: the connection stays open
        return;
      }
      const drop = faulty && dropsLeft > 0 && faults.dropAfterBytes < end - start + 1;
      if (drop) dropsLeft -= 1;
      const stream = fs.createReadStream(target, { start, end: drop ? start + faults.dropAfterBytes - 1 : end });
      stream.on("error", () => res.destroy());
      if (drop) stream.on("end", () => setTimeout(() => res.destroy(), 10));
      stream.pipe(res, { end: !drop });
    });
  };
  return new Promise((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      const url = `http://127.0.0.1:${server.address().port}`;
      resolvePromise({
        url,
        requests,
        close: () => new Promise((done) => (server.close(done), server.closeAllConnections())),
      });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const opt = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
  };
  const { url } = await startServer({ root: opt("--root", REPO), port: Number(opt("--port", process.env.PORT || 8080)) });
  console.log(`GuardReasoner Web: ${url}/www/`);
}
