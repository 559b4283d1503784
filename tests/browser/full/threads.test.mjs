// The threaded wasm builds (full tier; built by scripts/build-wasm.sh without --single): the CPU
// fallback on two threads (pkg-threads/: rayon on Web Workers sharing the memory, and the
// relaxed-SIMD build where Chromium has it) gives the native CLI's tokens with q8, q4 and f32
// weights, and a page that is not cross-origin isolated gets the single-threaded build whatever it
// asks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServers, quantCase, native, inBrowser } from "../quant-fixture.mjs";

useServers(["pkg", "pkg-threads", "pkg-threads-relaxed"]);
for (const [model, quant, backend, nativeBackend, threads, relaxedSimd] of [
  ["tiny", "q8", "cpu", "cpu", 2],
  ["tiny", "q4", "cpu", "cpu", 2],
  ["tiny", "q4", "cpu", "cpu", 2, false],
  ["tiny", "none", "cpu", "cpu", 2],
  ["smollm2", "q8", "cpu", "cpu", 2],
]) {
  quantCase(model, quant, backend, nativeBackend, threads, relaxedSimd);
}

test("a page that is not cross-origin isolated runs the single-threaded build, asked for threads or not", async () => {
  const expected = native("tiny", "q8", "cpu");
  const out = await inBrowser("tiny", "q8", "cpu", { threads: 2, isolated: false });
  assert.equal(out.isolated, false);
  assert.equal(out.threads, 1);
  assert.match(out.backend, /^cpu \(candle, 1 threads/);
  assert.deepEqual(out.tokens, expected);
});
