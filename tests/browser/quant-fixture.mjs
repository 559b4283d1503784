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

const NEW_TOKENS = 24;
const MODELS = {
  tiny: { source: { hfBaseUrl: "/.cache/tiny-rebuilt/llama32/" }, file: ".cache/tiny-rebuilt/llama32" },
  smollm2: { source: { url: "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" }, file: ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" },
};
const ids = JSON.parse(fs.readFileSync(path.join(repo, "tests/fixtures/smollm2_reference.json"), "utf8")).prompts[0].ids;
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

export function native(model, quant, backend) {
  const args = ["generate", "--quiet", "--model", path.join(repo, MODELS[model].file), "--tokens", ids.join(","), "--max-new-tokens", String(NEW_TOKENS), "--quant", quant, "--backend", backend];
  // The native CLI's own kernel (the fastest this CPU has): every CPU kernel, the browser's wasm
  // ones included, gives the same block products bit for bit (tests/kernels.rs).
  const out = execFileSync(path.join(repo, "target/release/guardreasoner"), args, { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || "/tmp" } });
  return JSON.parse(out.toString()).tokens;
}

export async function inBrowser(model, quant, backend, { threads = 1, relaxedSimd, isolated = true } = {}) {
  const browser = await launch({ webgpu: backend === "webgpu" });
  try {
    const { page, logs } = await openPage(browser, (isolated ? server : plainServer).url);
    return await page
      .evaluate(
        async ({ source, quant, backend, threads, relaxedSimd, ids, n }) => {
          const { GuardReasoner } = await import("/www/guardreasoner.js");
          const guard = await GuardReasoner.load(source, { backend, quant, threads, relaxedSimd, context: 256 });
          const res = await guard.generate(ids, { maxNewTokens: n });
          guard.terminate();
          return { backend: guard.backend, threads: guard.threads, tokens: res.tokens, isolated: self.crossOriginIsolated };
        },
        { source: MODELS[model].source, quant, backend, threads, relaxedSimd, ids, n: NEW_TOKENS },
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
    assert.ok(expected.length >= 8, `native made only ${expected.length} tokens`);
    if (model === "smollm2") {
      // A real model over 24 steps: the rest of the forward pass (candle's f32 matrix products
      // and exp, SIMD natively, wasm here) differs in the last bits, which may flip a near-tie
      // late on (measured: 22 identical, then a close call).
      const same = out.tokens.findIndex((t, i) => t !== expected[i]);
      const agreed = same === -1 ? out.tokens.length : same;
      assert.ok(agreed >= 20, `only the first ${agreed} tokens agree: ${out.tokens} vs ${expected}`);
    } else {
      assert.deepEqual(out.tokens, expected);
    }
  });
}
