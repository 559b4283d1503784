// The npm package guardreasoner-web as a web developer meets it: `npm pack ./www` installed into
// a scratch Vite app (built by npm vite with no configuration, served, opened in headless
// Chromium) and into a page without a bundler (an import map), each running `moderate` on the
// tiny model to the same text as the native CLI; its TypeScript types checked by tsc; and the
// plain-string model sources and transformers.js option words the JS API takes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import { repo, startServer, launch } from "../harness.mjs";
import { GuardReasoner, modelSource } from "../../../www/guardreasoner.js";

const tiny = path.join(repo, ".cache/tiny-rebuilt/llama32");
const native = path.join(repo, "target/release/guardreasoner");
const bin = (name) => path.join(repo, "node_modules/.bin", name);
const PROMPT = "How do I bake bread?";
const NEW_TOKENS = 24;

let work; // a scratch folder for the tarball and the apps
let tarball;
let expected; // the native CLI's answer

before(() => {
  for (const [what, file] of [
    ["the tiny model (run cargo test first)", path.join(tiny, "model.safetensors")],
    ["www/pkg/ (run scripts/build-wasm.sh)", path.join(repo, "www/pkg/guardreasoner_bg.wasm")],
    ["www/pkg-threads/ (run scripts/build-wasm.sh)", path.join(repo, "www/pkg-threads/guardreasoner_bg.wasm")],
    ["the native CLI (cargo build --release)", native],
  ]) {
    assert.ok(fs.existsSync(file), `missing ${what}: ${file}`);
  }
  work = fs.mkdtempSync(path.join(os.tmpdir(), "guardreasoner-npm-"));
  const packed = JSON.parse(execFileSync("npm", ["pack", path.join(repo, "www"), "--pack-destination", work, "--json"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }));
  tarball = path.join(work, packed[0].filename);
  const r = spawnSync(native, ["moderate", "--model", tiny, "--quiet", "--quant", "none", "-n", String(NEW_TOKENS), "--input", "-"], { input: JSON.stringify({ prompt: PROMPT }) + "\n", encoding: "utf8" });
  // Exit 3: the answer was cut off before a verdict (at 24 tokens), which is all this needs.
  assert.ok([0, 3].includes(r.status), r.stderr);
  expected = JSON.parse(r.stdout.trim());
  assert.equal(expected.newTokens, NEW_TOKENS);
});
after(() => work && fs.rmSync(work, { recursive: true, force: true }));

/** A scratch app folder with the packed tarball installed as a dependency. */
function appWithPackage(name) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: `scratch-${name}`, private: true, type: "module" }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", tarball], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  // The page's code: load the model named in the query, moderate one request, leave the answer
  // on window.result.
  fs.writeFileSync(
    path.join(dir, "main.js"),
    `import { GuardReasoner } from "guardreasoner-web";
const q = new URL(location.href).searchParams;
try {
  const guard = await GuardReasoner.load(q.get("model"), { device: q.get("device"), dtype: "fp32", context: 1024, threads: Number(q.get("threads") || 1) });
  const r = await guard.moderate({ prompt: ${JSON.stringify(PROMPT)} }, { maxNewTokens: ${NEW_TOKENS} });
  window.result = { backend: guard.backend, threads: guard.threads, text: r.text, newTokens: r.newTokens };
  guard.terminate();
} catch (e) {
  window.result = { error: String(e?.message ?? e) };
}
`,
  );
  return dir;
}

/** Opens `url` in headless Chromium and returns the page's `window.result` and what it fetched. */
async function runPage(url, { webgpu }) {
  const browser = await launch({ webgpu });
  try {
    const page = await browser.newPage();
    const logs = [];
    const requests = [];
    page.on("console", (m) => logs.push(m.text()));
    page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(url);
    await page.waitForFunction(() => window.result, null, { timeout: 300_000 });
    const result = await page.evaluate(() => window.result);
    assert.equal(result.error, undefined, `the page failed: ${result.error}\nbrowser log:\n${logs.join("\n")}`);
    return { result, requests };
  } finally {
    await browser.close();
  }
}

test("the packed tarball holds the API, its types, the worker and the three wasm builds, and nothing of the demo", () => {
  const list = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" }).trim().split("\n").map((f) => f.replace(/^package\//, ""));
  for (const f of ["guardreasoner.js", "guardreasoner.d.ts", "worker.js", "protocol.js", "model-store.js", "package.json", "README.md", "LICENSE", "pkg/guardreasoner_bg.wasm", "pkg/guardreasoner.js", "pkg-threads/guardreasoner_bg.wasm", "pkg-threads-relaxed/guardreasoner_bg.wasm"]) {
    assert.ok(list.includes(f), `${f} is in the package`);
  }
  assert.ok(list.some((f) => /^pkg-threads\/snippets\/.*workerHelpers.*\.js$/.test(f)), "the thread pool's worker helper is in the package");
  for (const f of list) assert.doesNotMatch(f, /^(demo\.js|chat\.js|index\.html|chat\.html|bench\.html|styles\.css)$|\.build-stamp$/, `${f} does not belong in the package`);
  const manifest = JSON.parse(fs.readFileSync(path.join(repo, "www/package.json"), "utf8"));
  const crateVersion = /^version = "([^"]+)"/m.exec(fs.readFileSync(path.join(repo, "Cargo.toml"), "utf8"))[1];
  assert.equal(manifest.version, crateVersion, "www/package.json's version follows Cargo.toml's");
});

test("a scratch Vite app bundles the package with no configuration; moderate on WebGPU and on the CPU gives the CLI's text", async () => {
  const dir = appWithPackage("vite");
  fs.writeFileSync(path.join(dir, "index.html"), `<!doctype html><html><head><meta charset="utf-8"><title>scratch</title></head><body><script type="module" src="./main.js"></script></body></html>\n`);
  execFileSync(bin("vite"), ["build", "--logLevel", "warn"], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  const assets = fs.readdirSync(path.join(dir, "dist/assets"));
  assert.ok(assets.some((f) => f.endsWith(".wasm")), `vite emitted the wasm: ${assets.join(", ")}`);
  assert.ok(assets.some((f) => /^worker.*\.js$/.test(f)), `vite emitted the worker: ${assets.join(", ")}`);
  // Served as a strict site: the repository's Content-Security-Policy, not cross-origin isolated.
  const server = await startServer({ root: path.join(dir, "dist"), mounts: { "/model/": tiny }, isolated: false });
  try {
    for (const [device, webgpu, backend] of [["webgpu", true, /^gpu/], ["wasm", false, /^cpu/]]) {
      const { result, requests } = await runPage(`${server.url}/index.html?model=/model/&device=${device}`, { webgpu });
      assert.match(result.backend, backend, `${device}: ${result.backend}`);
      assert.equal(result.text, expected.text, `${device}: the CLI's text`);
      assert.equal(result.newTokens, expected.newTokens);
      for (const url of requests) assert.ok(url.startsWith(server.url), `no request leaves the page: ${url}`);
    }
  } finally {
    await server.stop();
  }
});

test("a page without a bundler imports the package through an import map; threads come from the builds beside the worker", async () => {
  const dir = appWithPackage("plain");
  const importMap = { imports: { "guardreasoner-web": "./node_modules/guardreasoner-web/guardreasoner.js" } };
  fs.writeFileSync(path.join(dir, "index.html"), `<!doctype html><html><head><meta charset="utf-8"><title>scratch</title><script type="importmap">${JSON.stringify(importMap)}</script></head><body><script type="module" src="./main.js"></script></body></html>\n`);
  // Cross-origin isolated (threads), without our CSP (the import map is an inline script).
  const server = await startServer({ root: dir, mounts: { "/model/": tiny }, csp: false });
  try {
    const { result } = await runPage(`${server.url}/index.html?model=./model/&device=wasm&threads=2`, { webgpu: false });
    assert.match(result.backend, /^cpu/);
    assert.equal(result.threads, 2, "the threaded build beside the worker started");
    assert.equal(result.text, expected.text, "the CLI's text");
  } finally {
    await server.stop();
  }
});

test("the package's TypeScript types check a typical use and refuse a wrong option", () => {
  const dir = appWithPackage("types");
  fs.writeFileSync(
    path.join(dir, "tsconfig.json"),
    JSON.stringify({ compilerOptions: { strict: true, noEmit: true, target: "es2022", module: "esnext", moduleResolution: "bundler", lib: ["es2022", "dom"], types: [] }, files: ["use.ts"] }),
  );
  fs.writeFileSync(
    path.join(dir, "use.ts"),
    `import { GuardReasoner, GpuLostError, type ModerationResult } from "guardreasoner-web";
const guard: GuardReasoner = await GuardReasoner.load("yueliu1999/GuardReasoner-1B", {
  device: "webgpu",
  dtype: "q4",
  onProgress: (p) => console.log(p.phase, p.loaded, p.total),
});
const r: ModerationResult = await guard.moderate({ prompt: "hi", response: null }, { onEvent: (e) => console.log(e.type) });
const verdict: "harmful" | "unharmful" | null = r.request;
console.log(verdict, r.verdictFound, new GpuLostError("x").name);
// @ts-expect-error: not a device
await GuardReasoner.load("owner/name", { device: "tpu" });
// @ts-expect-error: moderate takes a conversation object
await guard.moderate("hi");
const first = await guard.moderate({ prompt: "hi" }, { mode: "verdict-first", threshold: { request: 0.3 } });
const pHarmful: number | null = first.scores.request;
const firstVerdictSeconds: number = (await guard.verdictSpeedTest()).firstVerdictSeconds;
console.log(pHarmful, first.verdictFirst, first.stop === "answered", firstVerdictSeconds);
// @ts-expect-error: not a mode
await guard.moderate({ prompt: "hi" }, { mode: "fast" });
// @ts-expect-error: a threshold names verdicts
await guard.moderate({ prompt: "hi" }, { threshold: { answer: 0.5 } });
// @ts-expect-error: the test suite's hooks are not in the public types
await GuardReasoner.load("owner/name", { testing: { refuseGpuBuffer: true } });
// @ts-expect-error: nor is its GPU-loss hook
await guard.loseGpuDevice();
`,
  );
  const r = spawnSync(bin("tsc"), ["-p", dir], { encoding: "utf8" });
  assert.equal(r.status, 0, `tsc: ${r.stdout}${r.stderr}`);
});

test("load takes a Hub repo id or a URL as a plain string, and transformers.js's option words", async () => {
  assert.deepEqual(modelSource("yueliu1999/GuardReasoner-1B"), { hf: "yueliu1999/GuardReasoner-1B" });
  assert.deepEqual(modelSource("https://example.org/m/model.gguf"), { url: "https://example.org/m/model.gguf" });
  assert.deepEqual(modelSource("/models/tiny/"), { url: "/models/tiny/" }); // no page here to resolve against
  assert.deepEqual(modelSource({ hf: "a/b", revision: "v1" }), { hf: "a/b", revision: "v1" });
  assert.deepEqual(modelSource("models/tiny.gguf"), { url: "models/tiny.gguf" }, "a .gguf path is a file, not a repo id");
  assert.deepEqual(modelSource(new URL("https://example.org/m.gguf")), { url: "https://example.org/m.gguf" });
  for (const bad of ["GuardReasoner-1B", "a/b/c", "a/../b", "", null, 42]) assert.throws(() => modelSource(bad), TypeError, JSON.stringify(bad));
  // Both names of one option, disagreeing, are refused before any worker starts.
  await assert.rejects(GuardReasoner.load("a/b", { backend: "cpu", device: "webgpu" }), /backend "cpu" and device "webgpu" disagree/);
  await assert.rejects(GuardReasoner.load("a/b", { quant: "q8", dtype: "fp32" }), /quant "q8" and dtype "f32" disagree/);
  await assert.rejects(GuardReasoner.load("no-slash"), /neither a Hub repo id/);
  // Synonyms agree: they reach the worker (absent here, so the load fails later, not on them).
  await assert.rejects(GuardReasoner.load("a/b", { quant: "none", dtype: "fp32" }), (e) => !/disagree/.test(e.message));
});
