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
  assert.ok(fs.existsSync(path.join(repo, "www/pkg/guardreasoner_bg.wasm")), "run scripts/build-wasm.sh first");
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
        return { backend: guard.backend, fallback: guard.fallback, batch: guard.batch, streamed, tokens: res.tokens, tokenized };
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
  assert.ok(out.tokens.length >= 32, `only ${out.tokens.length} tokens`);
  assert.deepEqual(out.streamed, out.tokens, "streamed tokens equal the result");
});

test("auto passes over the browser's fallback adapter (a GPU emulated on the CPU), says so, and gives the same tokens", async () => {
  const { out, seq } = await generateInBrowser(true, "auto");
  assert.match(out.backend, /^cpu/, `backend: ${out.backend}`);
  assert.match(out.fallback || "", /fallback that emulates a GPU on the CPU, slower than the CPU path/);
  assert.equal(out.batch, 1, "the CPU path's batch, not the GPU's");
  assert.deepEqual(out.tokens, seq.greedy_new_tokens.slice(0, out.tokens.length));
  assert.ok(out.tokens.length >= 32, `only ${out.tokens.length} tokens`);
});

// Cancellation belongs to one request: aborting A and at once submitting B stops A (B's submit
// does not clear A's cancel); aborting a queued D leaves the running C alone; terminate()
// settles every pending call, and later calls fail at once; an empty prompt is refused.
test("an abort cancels its own request only, terminate settles pending calls, an empty prompt is refused", async () => {
  const browser = await launch({ webgpu: false });
  try {
    const { page, logs } = await openPage(browser, server.url);
    const out = await page.evaluate(
      async ({ folder }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const guard = await GuardReasoner.load({ hfBaseUrl: folder }, { backend: "cpu", quant: "f32", context: 512, batch: 1 });
        const settle = (p) => p.then((r) => ({ text: r.text, newTokens: r.newTokens }), (e) => ({ name: e.name, message: e.message }));
        const a = { prompt: "Tell me about the history of bread, in detail." };
        const b = { prompt: "What is the capital of France?" };
        const aloneB = await guard.moderate(b, { maxNewTokens: 10 });
        // A long run aborted at its 5th token, B submitted in the same tick.
        const abortA = new AbortController();
        let tokensOfA = 0;
        let runB;
        const onEventA = (e) => {
          tokensOfA += e.type === "token";
          if (tokensOfA === 5 && !runB) {
            abortA.abort();
            runB = settle(guard.moderate(b, { maxNewTokens: 10 }));
          }
        };
        const afterA = await settle(guard.moderate(a, { maxNewTokens: 400, signal: abortA.signal, onEvent: onEventA }));
        const afterB = await runB;
        // C runs, D waits behind it and is aborted.
        const abortD = new AbortController();
        const runC = settle(guard.moderate(a, { maxNewTokens: 30 }));
        const runD = settle(guard.moderate(b, { maxNewTokens: 10, signal: abortD.signal }));
        abortD.abort();
        const [afterC, afterD] = await Promise.all([runC, runD]);
        const aloneC = await settle(guard.moderate(a, { maxNewTokens: 30 }));
        const empty = await settle(guard.moderate({ prompt: "  " }));
        const blankResponse = await settle(guard.moderate({ prompt: "hi", response: "" }));
        // terminate() with a call in flight (at its first token).
        let terminated = false;
        const pending = settle(guard.moderate(a, { maxNewTokens: 400, onEvent: () => terminated || ((terminated = true), guard.terminate()) }));
        const unsettled = () => new Promise((r) => setTimeout(() => r("unsettled 5 s later"), 5000));
        const afterTerminate = await Promise.race([pending, unsettled()]);
        const later = await Promise.race([settle(guard.moderate(b)), unsettled()]);
        return { aloneB: aloneB.text, afterA, tokensOfA, afterB, afterC, afterD, aloneC, empty, blankResponse, afterTerminate, later };
      },
      { folder: tinyFolder },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
    assert.equal(out.afterA.name, "AbortError", JSON.stringify(out.afterA));
    assert.equal(out.afterB.text, out.aloneB, "B is as alone");
    assert.equal(out.afterD.name, "AbortError", JSON.stringify(out.afterD));
    assert.equal(out.afterC.text, out.aloneC.text, "C runs to its end, untouched by D's abort");
    assert.equal(out.afterC.newTokens, 30);
    assert.match(out.empty.message ?? "", /the prompt is empty/);
    assert.match(out.blankResponse.message ?? "", /the response is empty/);
    assert.equal(out.afterTerminate.name, "AbortError", JSON.stringify(out.afterTerminate));
    assert.equal(out.later.name, "AbortError", JSON.stringify(out.later));
  } finally {
    await browser.close();
  }
});

// moderateMany and concurrent moderate() calls share one batch in the worker: every result is
// what moderate() gives that conversation alone, events carry their item, and on WebGPU the
// items' events interleave (they are decoded together, not queued one after another).
async function manyInBrowser(webgpu, backend) {
  const browser = await launch({ webgpu });
  try {
    const { page, logs } = await openPage(browser, server.url);
    return await page.evaluate(
      async ({ folder, backend }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const guard = await GuardReasoner.load({ hfBaseUrl: folder }, { backend, quant: "f32", context: 512, batch: 3 });
        const conversations = [
          { prompt: "How do I bake bread?" },
          { prompt: "Tell me a joke about cats.", response: "Why did the cat sit on the computer? To keep an eye on the mouse." },
          { prompt: "What is the capital of France?" },
          { prompt: "Write a poem about the sea, with rhymes, in four verses." },
        ];
        const maxNewTokens = 12;
        const alone = [];
        for (const c of conversations) alone.push(await guard.moderate(c, { maxNewTokens }));
        const events = [];
        const finishedOrder = [];
        const many = await guard.moderateMany(conversations, {
          maxNewTokens,
          onEvent: (e) => events.push(e.item),
          onResult: (i) => finishedOrder.push(i),
        });
        // Concurrent moderate() calls join the same batch.
        const concurrent = await Promise.all(conversations.map((c) => guard.moderate(c, { maxNewTokens })));
        // An aborted one fails alone.
        const abort = new AbortController();
        const mixed = conversations.map((c, i) =>
          guard.moderate(c, { maxNewTokens, signal: i === 1 ? abort.signal : undefined }).then(
            (r) => r.text,
            (e) => e.name,
          ),
        );
        abort.abort();
        const afterAbort = await Promise.all(mixed);
        guard.terminate();
        const texts = (rs) => rs.map((r) => r.text);
        const reused = [...alone, ...many, ...concurrent].map((r) => r.reusedTokens);
        return { backend: guard.backend, batch: guard.batch, alone: texts(alone), many: texts(many), concurrent: texts(concurrent), afterAbort, events, finishedOrder, reused };
      },
      { folder: tinyFolder, backend },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
  } finally {
    await browser.close();
  }
}

function checkMany(out) {
  assert.equal(out.batch, 3);
  assert.ok(out.alone.every((t) => t.length > 0));
  assert.deepEqual(out.many, out.alone, "moderateMany equals moderate one at a time");
  assert.deepEqual(out.concurrent, out.alone, "concurrent moderate calls equal moderate one at a time");
  // Every request, alone or in a batch, starts from the shared instruction's KV, computed once.
  assert.ok(out.reused[0] > 100 && out.reused.every((r) => r === out.reused[0]), `reused tokens: ${out.reused}`);
  assert.deepEqual([...new Set(out.events)].sort(), [0, 1, 2, 3], "events carry their item");
  assert.deepEqual([...out.finishedOrder].sort(), [0, 1, 2, 3]);
  assert.equal(out.afterAbort[1], "AbortError");
  assert.deepEqual(out.afterAbort.filter((_, i) => i !== 1), out.alone.filter((_, i) => i !== 1), "the others are untouched by an abort");
}

test("moderateMany and concurrent moderate calls decode together on WebGPU, each as it is alone", async () => {
  const out = await manyInBrowser(true, "webgpu");
  assert.match(out.backend, /^gpu/);
  checkMany(out);
  // Decoded together: item 1's first event comes before item 0's last.
  assert.ok(out.events.indexOf(1) < out.events.lastIndexOf(0), "items' events interleave");
});

test("moderateMany on the CPU fallback gives the same answers", async () => {
  const out = await manyInBrowser(false, "cpu");
  assert.match(out.backend, /^cpu/);
  checkMany(out);
});

test("a GPU lost mid-run rejects it and every later call with a GpuLostError; a new load on the CPU works", async () => {
  const browser = await launch({ webgpu: true });
  try {
    const { page, logs } = await openPage(browser, server.url);
    const out = await page.evaluate(
      async ({ folder }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const settle = (p) => p.then((r) => ({ text: r.text, newTokens: r.newTokens }), (e) => ({ name: e.name, message: e.message }));
        const conversation = { prompt: "Tell me about the history of bread, in detail." };
        const guard = await GuardReasoner.load({ hfBaseUrl: folder }, { backend: "webgpu", quant: "f32", context: 512, batch: 2 });
        const backend = guard.backend;
        // Lost at the 5th token of a long run; a second conversation is in the batch with it.
        let tokens = 0;
        let lost = null;
        const running = settle(
          guard.moderate(conversation, {
            maxNewTokens: 400,
            onEvent: (e) => {
              tokens += e.type === "token";
              if (tokens === 5 && !lost) lost = guard.loseGpuDevice();
            },
          }),
        );
        const beside = settle(guard.moderate({ prompt: "What is the capital of France?" }, { maxNewTokens: 400 }));
        const unsettled = () => new Promise((r) => setTimeout(() => r({ name: "unsettled 20 s later" }), 20000));
        const [afterLoss, besideLoss] = await Promise.all([Promise.race([running, unsettled()]), Promise.race([beside, unsettled()])]);
        const later = await Promise.race([settle(guard.moderate(conversation, { maxNewTokens: 5 })), unsettled()]);
        const onCpu = await GuardReasoner.load({ hfBaseUrl: folder }, { backend: "cpu", quant: "f32", context: 512 });
        const cpuRun = await settle(onCpu.moderate(conversation, { maxNewTokens: 5 }));
        onCpu.terminate();
        return { backend, lostReply: await lost, tokens, afterLoss, besideLoss, later, cpuRun };
      },
      { folder: tinyFolder },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
    assert.match(out.backend, /^gpu/);
    assert.equal(out.lostReply, true, "the worker destroyed the device");
    for (const what of ["afterLoss", "besideLoss", "later"]) {
      assert.equal(out[what].name, "GpuLostError", `${what}: ${JSON.stringify(out[what])}`);
      assert.match(out[what].message, /^the GPU device was lost .*use the CPU backend/, what);
    }
    assert.ok(out.tokens < 400, `the run stopped at the loss (${out.tokens} token events)`);
    assert.equal(out.cpuRun.newTokens, 5, JSON.stringify(out.cpuRun));
  } finally {
    await browser.close();
  }
});

// In one page on WebGPU: a load with `refuse` on the GPU (a failure expected: its message), the
// same with backend "auto" (a CPU fallback expected) and a load with `fits` on the GPU, each that
// loads answering "hi" in 5 tokens.
async function refusedFallbackAndFit(refuse, fits) {
  const browser = await launch({ webgpu: true });
  try {
    const { page, logs } = await openPage(browser, server.url);
    return await page.evaluate(
      async ({ folder, refuse, fits }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const refused = await GuardReasoner.load({ hfBaseUrl: folder }, { ...refuse, backend: "webgpu" }).then(
          (g) => (g.terminate(), { loaded: g.backend }),
          (e) => ({ message: e.message }),
        );
        const auto = await GuardReasoner.load({ hfBaseUrl: folder }, { ...refuse, backend: "auto" });
        const fallback = { backend: auto.backend, fallback: auto.fallback, text: (await auto.moderate({ prompt: "hi" }, { maxNewTokens: 5 })).text };
        auto.terminate();
        const fitting = await GuardReasoner.load({ hfBaseUrl: folder }, { ...fits, backend: "webgpu" });
        const gpu = { backend: fitting.backend, text: (await fitting.moderate({ prompt: "hi" }, { maxNewTokens: 5 })).text };
        fitting.terminate();
        return { refused, fallback, gpu };
      },
      { folder: tinyFolder, refuse, fits },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
  } finally {
    await browser.close();
  }
}

test("a buffer the GPU refuses while loading (test hook, as out of memory would) fails the load at once; auto falls back to the CPU; the page goes on", async () => {
  // The browser reports the refusal after the (synchronous) load went on: only the load's error
  // scopes catch it before the load says it is done.
  const options = { quant: "f32", context: 160 };
  const out = await refusedFallbackAndFit({ ...options, testing: { refuseGpuBuffer: true } }, options);
  assert.match(out.refused.message ?? JSON.stringify(out.refused), /the GPU (refused a buffer of|ran out of memory loading) the model .*--backend cpu/, JSON.stringify(out.refused));
  assert.match(out.fallback.backend, /^cpu/);
  assert.match(out.fallback.fallback ?? "", /the GPU failed .*the GPU (refused a buffer|ran out of memory)/, out.fallback.fallback);
  assert.match(out.gpu.backend, /^gpu/, "without the hook the same page loads on the GPU");
  assert.equal(out.gpu.text, out.fallback.text, "and answers as the CPU does");
});

test("a KV cache over the GPU's buffer limit (forced small) is refused naming the knobs; auto falls back to the CPU; the page goes on", async () => {
  // 64 KiB bindings hold the weights (split by rows) but not 4 x 1024 positions of cache.
  const small = { quant: "f32", context: 1024, batch: 4, testing: { gpuBufferLimit: 64 * 1024 } };
  const out = await refusedFallbackAndFit(small, { ...small, context: 160, batch: 1 });
  assert.match(out.refused.message ?? JSON.stringify(out.refused), /over the GPU binding limit 65536: use a smaller context or batch \(--context, --batch\)/, JSON.stringify(out.refused));
  assert.match(out.fallback.backend, /^cpu/);
  assert.match(out.fallback.fallback ?? "", /the GPU failed .*--context/, out.fallback.fallback);
  assert.match(out.gpu.backend, /^gpu/, "a cache that fits loads on the GPU");
  assert.equal(out.gpu.text, out.fallback.text, "and answers as the CPU does");
});
