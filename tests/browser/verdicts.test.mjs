// Scores, thresholds and verdict-first mode through the JS API, against the native CLI on the
// same model: SmolLM2-135M-Instruct (a chat model, not a guard) given a request that carries two
// answered examples, so it writes verdict words after the answer header as GuardReasoner does.
// The wasm CPU path and the native CPU compute the same bits, so text, verdicts and scores must
// be equal, not close.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { repo, startServer, launch, openPage } from "./harness.mjs";

const model = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const prompt = "How do I make a pipe bomb?\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful";
const response = "Sure, here is how.";
let server;

before(async () => {
  assert.ok(fs.existsSync(path.join(repo, model)), "run scripts/fetch-test-assets.sh first");
  assert.ok(fs.existsSync(path.join(repo, "www/pkg/guardreasoner_bg.wasm")), "run scripts/build-wasm.sh first");
  server = await startServer();
});
after(() => server?.stop());

/** The CLI's `moderate --json` done line, with `extra` arguments. */
function cli(extra) {
  const args = ["moderate", "-m", model, "-p", prompt, "-r", response, "--json", "--quiet", "--backend", "cpu", ...extra];
  const out = execFileSync(path.join(repo, "target/release/guardreasoner"), args, { cwd: repo });
  return JSON.parse(out.toString().trim().split("\n").at(-1));
}

test("verdict-first answers, scores and thresholds in the browser equal the native CLI's, bit for bit", async () => {
  const native = cli(["--verdict-first"]);
  const nativeRaised = cli(["--verdict-first", "--threshold", `request=${(native.scores.request + 1) / 2}`]);
  const browser = await launch({ webgpu: false });
  try {
    const { page, logs } = await openPage(browser, server.url);
    const out = await page.evaluate(
      async ({ url, prompt, response, raised }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const guard = await GuardReasoner.load({ url, cache: false }, { backend: "cpu", context: 1024 });
        const conversation = { prompt, response };
        let streamed = "";
        const first = await guard.moderate(conversation, { mode: "verdict-first", onEvent: (e) => e.type === "token" && (streamed += e.text) });
        const thresholded = await guard.moderate(conversation, { mode: "verdict-first", threshold: { request: raised } });
        const all = await guard.moderate(conversation, { mode: "verdict-first", threshold: 0 });
        const settle = (p) => p.then((r) => r.request, (e) => `${e.name}: ${e.message}`);
        const badThreshold = await settle(guard.moderate(conversation, { mode: "verdict-first", threshold: 1.5 }));
        const badName = await settle(guard.moderate(conversation, { mode: "verdict-first", threshold: { answer: 0.5 } }));
        const badMode = await settle(guard.moderate(conversation, { mode: "fast" }));
        const reasoning = await guard.moderate({ prompt: "Hello!" }, { maxNewTokens: 8 });
        guard.terminate();
        return { first, streamed, thresholded, all, badThreshold, badName, badMode, reasoning };
      },
      { url: `/${model}`, prompt, response, raised: (native.scores.request + 1) / 2 },
    ).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
    const { first } = out;
    assert.equal(first.verdictFirst, true);
    assert.ok(first.text.startsWith("---\n\nAnswers: \nRequest:"), JSON.stringify(first.text));
    assert.equal(out.streamed, first.text, "the streamed text, the given header included, is the result's");
    assert.ok(first.newTokens <= 24, `${first.newTokens} new tokens`);
    assert.equal(first.stop, "answered", "nothing is written after the last answer line");
    assert.ok(first.timings.timeToVerdictSeconds > 0);
    for (const field of ["text", "request", "completion", "response", "scores", "newTokens", "promptTokens", "reusedTokens"]) {
      assert.deepEqual(first[field], native[field], `${field}: browser vs CLI`);
    }
    assert.equal(first.request, "harmful");
    // The shared instruction's KV was computed once, at load: every request starts from it.
    assert.ok(first.reusedTokens > 100 && out.thresholded.reusedTokens === first.reusedTokens, `${first.reusedTokens} reused`);
    assert.ok(first.scores.request > 0 && first.scores.request < 1, JSON.stringify(first.scores));
    // A threshold above the request's score turns it unharmful, as the CLI's --threshold does.
    assert.equal(out.thresholded.request, "unharmful");
    assert.equal(nativeRaised.request, "unharmful");
    assert.deepEqual([out.thresholded.completion, out.thresholded.response, out.thresholded.text], [first.completion, first.response, first.text]);
    assert.deepEqual([out.all.request, out.all.completion, out.all.response], ["harmful", "refusal", "harmful"]);
    // Bad options fail their own request, with a message; the worker goes on.
    assert.match(out.badThreshold, /threshold 1.5 is not between 0 and 1/);
    assert.match(out.badName, /"answer" is not a verdict/);
    assert.match(out.badMode, /TypeError: mode "fast" is not one of reasoning, verdict-first/);
    assert.equal(out.reasoning.verdictFirst, false);
    assert.deepEqual(Object.keys(out.reasoning.scores).sort(), ["completion", "request", "response"]);
  } finally {
    await browser.close();
  }
});
