// The shape zoo in the browser (tests/zoo.rs natively): tiny Llama models with one KV head and
// widths that are not multiples of 32 (zoo_mqa), and eight query heads per KV head with head_dim
// 64 (zoo_gqa8). The JS API's `moderate` writes transformers' greedy answer to GuardReasoner's
// prompt on WebGPU and on the wasm CPU path (f32), and loads and answers with q8 and q4 (a few
// tokens: what quantization changes in the answer is checked against the native CLI in
// quant.test.mjs and natively in tests/zoo.rs); the batch evaluator writes that answer as each
// item's prediction on both paths.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { repo, startServer, launch, openPage } from "./harness.mjs";
import { evaluate, tmp, benchmark } from "./evaluator-fixture.mjs";

const ZOO = ["zoo_mqa", "zoo_gqa8"];
let server;

before(async () => {
  for (const name of ZOO) {
    assert.ok(fs.existsSync(path.join(repo, ".cache/tiny-rebuilt", name, "model.safetensors")), `${name}: run cargo test first (it rebuilds the zoo)`);
  }
  server = await startServer();
});
after(() => server?.stop());

const golden = (name) => JSON.parse(fs.readFileSync(path.join(repo, "tests/fixtures/tiny", `${name}.json`), "utf8")).guard_goldens;

/** `moderate` on every zoo model in one page, with `quant` on `backend`, for `newTokens` tokens
 * (the golden's length unless given). */
async function moderateAll(backend, quant, newTokens) {
  const browser = await launch({ webgpu: backend === "webgpu" });
  try {
    const { page, logs } = await openPage(browser, server.url);
    const runs = ZOO.map((name) => ({ name, base: `/.cache/tiny-rebuilt/${name}/`, golden: golden(name) }));
    return await page
      .evaluate(
        async ({ runs, backend, quant, newTokens }) => {
          const { GuardReasoner } = await import("/www/guardreasoner.js");
          const out = [];
          for (const { name, base, golden } of runs) {
            const guard = await GuardReasoner.load({ hfBaseUrl: base }, { backend, quant, context: 512 });
            const { prompt, response } = golden.conversation;
            const result = await guard.moderate({ prompt, response }, { maxNewTokens: newTokens ?? golden.greedy_new_tokens.length });
            out.push({ name, backend: guard.backend, text: result.text, want: golden.greedy_text });
            guard.terminate();
          }
          return out;
        },
        { runs, backend, quant, newTokens },
      )
      .catch((e) => {
        throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
      });
  } finally {
    await browser.close();
  }
}

for (const backend of ["webgpu", "cpu"]) {
  test(`the zoo's answers on ${backend} equal transformers' greedy text`, async () => {
    for (const run of await moderateAll(backend, "none")) {
      assert.match(run.backend, backend === "webgpu" ? /^gpu/ : /^cpu/, run.name);
      assert.equal(run.text, run.want, `${run.name} on ${run.backend}`);
    }
  });
}

for (const quant of ["q8", "q4"]) {
  test(`the zoo loads and answers with ${quant} on the wasm CPU path and on WebGPU`, async () => {
    for (const backend of ["cpu", "webgpu"]) {
      for (const run of await moderateAll(backend, quant, 4)) {
        assert.ok(run.text.length > 0, `${run.name} on ${run.backend}: an answer`);
      }
    }
  });
}

test("the evaluator writes the zoo's answers as predictions on the wasm CPU path and on WebGPU", async () => {
  // A benchmark file of the golden conversation three times (a batch shares the instruction),
  // with the paper's instruction as its files hold it.
  const instruction = benchmark("SimpleSafetyTests")[0].instruction;
  for (const name of ZOO) {
    const g = golden(name);
    const bench = path.join(tmp, `zoo-bench-${name}`);
    fs.mkdirSync(bench, { recursive: true });
    const input = `Human user:\n${g.conversation.prompt}\n\nAI assistant:\n${g.conversation.response}\n\n`;
    fs.writeFileSync(path.join(bench, "0_0_SimpleSafetyTests.json"), JSON.stringify(Array(3).fill({ instruction, input, output: "unharmful" })));
    for (const backend of ["cpu", "webgpu"]) {
      const out = path.join(tmp, `zoo-${name}-${backend}`);
      const model = path.join(repo, ".cache/tiny-rebuilt", name);
      const r = await evaluate(["--model", model, "--benchmark-dir", bench, "--datasets", "SimpleSafetyTests", "--out", out, "--backend", backend, "--quant", "f32", "--max-new-tokens", String(g.greedy_new_tokens.length)]);
      assert.equal(r.code, 0, r.stderr);
      const lines = fs.readFileSync(path.join(out, "SimpleSafetyTests/generated_predictions.jsonl"), "utf8").split("\n").filter((l) => l);
      assert.equal(lines.length, 3, `${name} on ${backend}`);
      for (const line of lines) assert.equal(JSON.parse(line).predict, g.greedy_text, `${name} on ${backend}: predict`);
    }
  }
});
