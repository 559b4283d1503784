// The JS side's copy of the core's words and defaults (www/protocol.js) against the core itself:
// the wasm module's `vocabulary()` (Rust `Device::WORDS`, `Quant::WORDS`, `MODES`, the defaults,
// the GPU-lost prefix and the run file names). A word added or renamed on one side only fails
// here. No browser: Node instantiates the same wasm package the worker loads.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { repo } from "./harness.mjs";
import { BACKENDS, DEFAULTS, GPU_LOST_PREFIX, MODES, QUANTS, RUN_FILES, queryWord } from "../../www/protocol.js";

const pkg = path.join(repo, "www/pkg");
const wasm = await import(path.join(pkg, "guardreasoner.js"));
await wasm.default({ module_or_path: await readFile(path.join(pkg, "guardreasoner_bg.wasm")) });
const core = wasm.vocabulary();
const sorted = (words) => [...words].sort();

test("the option words are the core's", () => {
  assert.deepEqual(sorted(BACKENDS), sorted(core.backends));
  assert.deepEqual(sorted(QUANTS), sorted(core.quants));
  assert.deepEqual([...MODES], core.modes);
});

test("the defaults the core owns are the core's, and the pages' own are words it takes", () => {
  assert.equal(DEFAULTS.context, core.defaults.context);
  assert.equal(DEFAULTS.maxNewTokens, core.defaults.maxNewTokens);
  assert.equal(DEFAULTS.mode, core.defaults.mode);
  assert.ok(core.backends.includes(DEFAULTS.backend), DEFAULTS.backend);
  assert.ok(core.quants.includes(DEFAULTS.quant), DEFAULTS.quant);
});

test("the GPU-lost prefix and the run's file names are the core's", () => {
  assert.equal(GPU_LOST_PREFIX, core.gpuLostPrefix);
  assert.deepEqual({ ...RUN_FILES }, core.files);
});

test("a page reads its address's words as the API does and refuses the rest by name", () => {
  const query = (text) => new URLSearchParams(text);
  assert.equal(queryWord(query("backend=WebGPU"), "backend", BACKENDS), "webgpu");
  assert.equal(queryWord(query("quant= q4_0 "), "quant", QUANTS), "q4_0");
  assert.equal(queryWord(query(""), "quant", QUANTS), undefined);
  assert.throws(() => queryWord(query("backend=tpu"), "backend", BACKENDS), /\?backend=tpu is not one of auto, webgpu, gpu, cpu/);
  assert.throws(() => queryWord(query("mode=fast"), "mode", MODES), /reasoning, verdict-first/);
});
