// The browser's default weight setting (q8: float weights quantized to 8-bit blocks while
// loading) checked for output, not only for loading: greedy tokens in the browser equal the
// native CLI's with the same quantization (`guardreasoner generate --quant q8`), on the CPU
// fallback (one thread, pkg/) against the native CPU backend and on WebGPU against the native GPU
// backend (the same WGSL), for the tiny Llama-3.2-like model (bf16, quantized on load) and
// SmolLM2 (GGUF Q4_1 with an 8-bit embedding). q4 and f32 weights (`none`) are checked the same
// way on the tiny model, and q8 and f32 on zoo_mqa, whose widths are not whole blocks (tensors kept
// in f32 beside 8-bit ones). The threaded builds are checked in the full tier
// (tests/browser/full/threads.test.mjs).
import { useServers, quantCase } from "./quant-fixture.mjs";

useServers(["pkg"]);
for (const [model, quant, backend, nativeBackend, threads] of [
  ["tiny", "q8", "cpu", "cpu", 1],
  ["tiny", "q8", "webgpu", "gpu", 1],
  ["tiny", "q4", "cpu", "cpu", 1],
  ["tiny", "none", "cpu", "cpu", 1],
  ["zoo_mqa", "q8", "cpu", "cpu", 1],
  ["zoo_mqa", "none", "cpu", "cpu", 1],
  ["smollm2", "q8", "cpu", "cpu", 1],
]) {
  quantCase(model, quant, backend, nativeBackend, threads);
}
