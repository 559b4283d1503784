#!/usr/bin/env node
// Static server on 127.0.0.1 with the cross-origin isolation headers wasm threads and
// SharedArrayBuffer need. Serves the repository root (the demo is /www/, the wasm package /pkg/)
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

/**
 * Start the server. Resolves to `{url, close()}` once it listens (`url` without a trailing slash).
 * `mounts`: a URL prefix ending in "/" to an absolute folder, or a URL path to one absolute file.
 */
export function startServer({ root = REPO, port = 0, mounts = {} } = {}) {
  root = path.resolve(root);
  const server = http.createServer((req, res) => {
    try {
      handle(req, res);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500, HEADERS);
      res.end(`server error: ${e.message}`);
    }
  });
  const handle = (req, res) => {
    // Only this machine's names: a page elsewhere that rebinds its DNS name to 127.0.0.1 must
    // not read these files.
    const host = (req.headers.host || "").replace(/:\d+$/, "");
    if (!["127.0.0.1", "localhost", "[::1]"].includes(host)) {
      res.writeHead(403, HEADERS).end("forbidden host");
      return;
    }
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    } catch {
      res.writeHead(400, HEADERS).end("bad request");
      return;
    }
    if (pathname.includes("\0")) {
      res.writeHead(400, HEADERS).end("bad request");
      return;
    }
    if (pathname === "/") {
      res.writeHead(302, { ...HEADERS, Location: "/www/" }).end();
      return;
    }
    const file = resolve(pathname, root, mounts);
    if (!file) {
      res.writeHead(403, HEADERS).end("forbidden");
      return;
    }
    const target = fs.existsSync(file) && fs.statSync(file).isDirectory() ? path.join(file, "index.html") : file;
    fs.stat(target, (err, stat) => {
      if (err || !stat.isFile()) {
        res.writeHead(404, { ...HEADERS, "Content-Type": "text/plain" }).end(`not found: ${pathname}`);
        return;
      }
      res.writeHead(200, { ...HEADERS, "Content-Type": TYPES[path.extname(target)] || "application/octet-stream", "Content-Length": stat.size });
      if (req.method === "HEAD") return res.end();
      fs.createReadStream(target)
        .on("error", () => res.destroy())
        .pipe(res);
    });
  };
  return new Promise((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      const url = `http://127.0.0.1:${server.address().port}`;
      resolvePromise({
        url,
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
