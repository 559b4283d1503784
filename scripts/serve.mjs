#!/usr/bin/env node
// Static server for the demo on 127.0.0.1, with the cross-origin isolation headers wasm threads
// and SharedArrayBuffer need. Serves the repository root: the demo is /www/, the wasm package
// /pkg/. Usage: node scripts/serve.mjs [--port N] [--root DIR]   (port 0 picks a free one)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const root = path.resolve(opt("--root", path.join(path.dirname(fileURLToPath(import.meta.url)), "..")));
const port = Number(opt("--port", process.env.PORT || 8080));

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

const server = http.createServer((req, res) => {
  const headers = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
  };
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
  } catch {
    res.writeHead(400, headers).end("bad request");
    return;
  }
  if (pathname === "/") {
    res.writeHead(302, { ...headers, Location: "/www/" }).end();
    return;
  }
  const file = path.join(root, path.normalize(pathname));
  if (!file.startsWith(root + path.sep) && file !== root) {
    res.writeHead(403, headers).end("forbidden");
    return;
  }
  const target = fs.existsSync(file) && fs.statSync(file).isDirectory() ? path.join(file, "index.html") : file;
  fs.stat(target, (err, stat) => {
    if (err || !stat.isFile()) {
      res.writeHead(404, { ...headers, "Content-Type": "text/plain" }).end(`not found: ${pathname}`);
      return;
    }
    res.writeHead(200, { ...headers, "Content-Type": TYPES[path.extname(target)] || "application/octet-stream", "Content-Length": stat.size });
    if (req.method === "HEAD") return res.end();
    fs.createReadStream(target).pipe(res);
  });
});

server.listen(port, "127.0.0.1", () => {
  const { port: actual } = server.address();
  console.log(`GuardReasoner Web: http://127.0.0.1:${actual}/www/`);
});
