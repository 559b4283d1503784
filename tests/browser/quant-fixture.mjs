// What the browser-vs-CLI quantization tests share (tests/browser/quant.test.mjs, fast tier, one
// thread and WebGPU; tests/browser/full/threads.test.mjs, the threaded builds): greedy tokens in
// the browser equal the native CLI's with the same quantization (`guardreasoner generate
// --quant`), on the CPU fallback against the native CPU backend and on WebGPU against the native
// GPU backend (the same WGSL).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { repo, startServer, launch, openPage } from "./harness.mjs";

const prompts = JSON.parse(fs.readFileSync(path.join(repo, "tests/fixtures/smollm2_reference.json"), "utf8")).prompts.map((p) => p.ids);
// The tiny model: 24 greedy tokens after the first reference prompt. SmolLM2 (a real model, where
// a last-bit difference anywhere in the forward pass flips a near-tie sooner or later): up to 128
// after each of the four (an EOS ends some sooner: 313 in all today), at least `least` in all.
const MODELS = {
  tiny: { source: { hfBaseUrl: "/.cache/tiny-rebuilt/llama32/" }, file: ".cache/tiny-rebuilt/llama32", prompts: prompts.slice(0, 1), n: 24, least: 8 },
  smollm2: { source: { url: "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" }, file: ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", prompts, n: 128, least: 200 },
  // Widths that are not whole blocks (tensors kept in f32 under q8 and q4) and one KV head.
  zoo_mqa: { source: { hfBaseUrl: "/.cache/tiny-rebuilt/zoo_mqa/" }, file: ".cache/tiny-rebuilt/zoo_mqa", prompts: prompts.slice(0, 2), n: 64, least: 8 },
};
let server;
let plainServer; // without the cross-origin isolation headers

/** Starts the servers for the calling test file (and stops them after), once the wasm packages
 * it needs are there. */
export function useServers(packages) {
  before(async () => {
    for (const pkg of packages) assert.ok(fs.existsSync(path.join(repo, "www", pkg, "guardreasoner_bg.wasm")), `www/${pkg}: run scripts/build-wasm.sh first`);
    server = await startServer();
    plainServer = await startServer({ isolated: false });
  });
  after(() => Promise.all([server?.stop(), plainServer?.stop()]));
}

/** The native CLI's greedy tokens after each of the model's prompts. */
export function native(model, quant, backend) {
  const { file, prompts, n } = MODELS[model];
  return prompts.map((ids) => {
    const args = ["generate", "--quiet", "--model", path.join(repo, file), "--tokens", ids.join(","), "--max-new-tokens", String(n), "--quant", quant, "--backend", backend];
    // The native CLI's own kernel (the fastest this CPU has): every CPU kernel, the browser's wasm
    // ones included, gives the same block products bit for bit (tests/kernels.rs).
    const out = execFileSync(path.join(repo, "target/release/guardreasoner"), args, { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || "/tmp" } });
    return JSON.parse(out.toString()).tokens;
  });
}

export async function inBrowser(model, quant, backend, { threads = 1, relaxedSimd, isolated = true } = {}) {
  const browser = await launch({ webgpu: backend === "webgpu" });
  try {
    const { page, logs } = await openPage(browser, (isolated ? server : plainServer).url);
    return await page
      .evaluate(
        async ({ source, quant, backend, threads, relaxedSimd, prompts, n }) => {
          const { GuardReasoner } = await import("/www/guardreasoner.js");
          const guard = await GuardReasoner.load(source, { backend, quant, threads, relaxedSimd, context: 512 });
          const tokens = [];
          for (const ids of prompts) tokens.push((await guard.generate(ids, { maxNewTokens: n })).tokens);
          guard.terminate();
          return { backend: guard.backend, threads: guard.threads, tokens, isolated: self.crossOriginIsolated };
        },
        { source: MODELS[model].source, quant, backend, threads, relaxedSimd, prompts: MODELS[model].prompts, n: MODELS[model].n },
      )
      .catch((e) => {
        throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
      });
  } finally {
    await browser.close();
  }
}

/** One case: `model` with `quant` in the browser on `backend` (with `threads` and `relaxedSimd` on
 * the CPU) gives the native CLI's tokens on `nativeBackend`. Threaded runs take the relaxed-SIMD
 * build where Chromium has it (Q4 blocks through `relaxed_dot_i8x16_i7x16_add`), unless
 * `relaxedSimd: false`; both give the same integer sums. */
export function quantCase(model, quant, backend, nativeBackend, threads, relaxedSimd) {
  const simd = threads > 1 && relaxedSimd !== false ? "simd128\\+relaxed" : "simd128";
  const on = backend === "cpu" ? `${backend}, ${threads} thread${threads > 1 ? "s" : ""}, ${simd.replace("\\", "")}` : backend;
  test(`${model} with ${quant} in the browser (${on}) equals the native CLI's --quant ${quant} (${nativeBackend})`, async () => {
    const expected = native(model, quant, nativeBackend);
    const out = await inBrowser(model, quant, backend, { threads, relaxedSimd });
    assert.match(out.backend, backend === "cpu" ? new RegExp(`^cpu \\(candle, ${threads} threads, ${simd} quantized kernel`) : /^gpu/);
    assert.equal(out.threads, threads, "the threads the worker reports");
    const made = expected.reduce((n, tokens) => n + tokens.length, 0);
    assert.ok(made >= MODELS[model].least, `native made only ${made} tokens`);
    expected.forEach((tokens, p) => {
      const differs = out.tokens[p].findIndex((t, i) => t !== tokens[i]);
      assert.deepEqual(out.tokens[p], tokens, `prompt ${p}: the browser's tokens differ from the native CLI's from step ${differs}`);
    });
  });
}
