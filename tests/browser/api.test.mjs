// The JS API in headless Chromium through the Web Worker: greedy tokens streamed from the wasm
// module equal transformers' goldens on the tiny Llama-3.2-like model, on WebGPU (SwiftShader
// without a GPU) and on the CPU fallback with WebGPU disabled.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { repo, startServer, launch, openPage } from "./harness.mjs";

const golden = JSON.parse(fs.readFileSync(path.join(repo, "tests/fixtures/tiny/llama32.json"), "utf8"));
// Rebuilt by the Rust tests (tests/common/tiny.rs) before these run.
const tinyFolder = "/.cache/tiny-rebuilt/llama32/";
let server;

before(async () => {
  assert.ok(fs.existsSync(path.join(repo, ".cache/tiny-rebuilt/llama32/model.safetensors")), "run cargo test first (it rebuilds the tiny model)");
  assert.ok(fs.existsSync(path.join(repo, "pkg/guardreasoner_bg.wasm")), "run scripts/build-wasm.sh first");
  server = await startServer();
});
after(() => server?.stop());

async function generateInBrowser(webgpu, backend) {
  const browser = await launch({ webgpu });
  try {
    const { page, logs } = await openPage(browser, server.url);
    const seq = golden.transformers_goldens.sequences[1];
    const out = await page.evaluate(
      async ({ folder, ids, n, backend }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const guard = await GuardReasoner.load({ hfBaseUrl: folder }, { backend, quant: "f32", context: 512 });
        const streamed = [];
        const res = await guard.generate(ids, { maxNewTokens: n, onToken: (t) => streamed.push(t.token) });
        const tokenized = await guard.tokenize("Hello, world!");
        guard.terminate();
        return { backend: guard.backend, fallback: guard.fallback, streamed, tokens: res.tokens, tokenized };
      },
      { folder: tinyFolder, ids: seq.input_ids, n: seq.greedy_new_tokens.length, backend },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
    return { out, seq };
  } finally {
    await browser.close();
  }
}

test("tiny Llama-3.2-like model on WebGPU matches transformers' greedy tokens", async () => {
  const { out, seq } = await generateInBrowser(true, "webgpu");
  assert.match(out.backend, /^gpu/, `backend: ${out.backend}`);
  // EOS ids may stop generation early; compare what was generated.
  assert.deepEqual(out.tokens, seq.greedy_new_tokens.slice(0, out.tokens.length));
  assert.ok(out.tokens.length >= 32, `only ${out.tokens.length} tokens`);
  assert.deepEqual(out.streamed, out.tokens, "streamed tokens equal the result");
  assert.equal(out.tokenized[0], 128000, "BOS first");
});

test("with WebGPU disabled the CPU fallback gives the same tokens and says so", async () => {
  const { out, seq } = await generateInBrowser(false, "auto");
  assert.match(out.backend, /^cpu/, `backend: ${out.backend}`);
  assert.match(out.fallback || "", /CPU/);
  assert.deepEqual(out.tokens, seq.greedy_new_tokens.slice(0, out.tokens.length));
});
