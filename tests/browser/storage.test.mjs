// Model bytes in the browser (www/model-store.js): downloads stream into OPFS and are read back
// through sync access handles; a broken download resumes with one Range request per break and
// gives the same tokens as an unbroken one; a server without ranges still ends complete; a quota
// too small gives a clear message and leaves the page usable; a Hub revision is pinned to its
// commit, a new commit is a fresh download (never spliced), and an offline reload uses the pin.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { repo, startServer, launch, openPage } from "./harness.mjs";

const tiny = (name) => path.join(repo, ".cache/tiny-rebuilt", name);
const golden = (name) => JSON.parse(fs.readFileSync(path.join(repo, `tests/fixtures/tiny/${name}.json`), "utf8")).transformers_goldens.sequences[1];
const MiB = 2 ** 20;

before(() => {
  for (const name of ["llama32", "classic"]) assert.ok(fs.existsSync(path.join(tiny(name), "model.safetensors")), "run cargo test first (it rebuilds the tiny models)");
  assert.ok(fs.existsSync(path.join(repo, "www/pkg/guardreasoner_bg.wasm")), "run scripts/build-wasm.sh first");
});

/** One browser profile (one OPFS) for a test: playwright's `browser.newPage()` would give each
 * page a context, and storage, of its own. */
async function launchProfile() {
  const browser = await launch({ webgpu: false });
  const context = await browser.newContext();
  return { newPage: () => context.newPage(), close: () => browser.close() };
}

/** Loads `source` in a new page of `profile` and generates the goldens' tokens; resolves to
 * `{tokens, progress}` or `{error}`. */
async function loadAndGenerate(profile, server, source, { name = "llama32", options = {} } = {}) {
  const { page, logs } = await openPage(profile, server.url);
  const seq = golden(name);
  try {
    return await page.evaluate(
      async ({ source, ids, n, options }) => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const progress = [];
        let guard;
        try {
          guard = await GuardReasoner.load(source, { backend: "cpu", quant: "none", context: 256, ...options, onProgress: (p) => progress.push(p) });
        } catch (e) {
          return { error: e.message, progress };
        }
        const res = await guard.generate(ids, { maxNewTokens: n });
        guard.terminate();
        return { tokens: res.tokens, progress };
      },
      { source, ids: seq.input_ids, n: 12, options },
    );
  } catch (e) {
    throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
  } finally {
    await page.close();
  }
}

const expected = (name) => golden(name).greedy_new_tokens.slice(0, 12);

test("a download broken four times resumes with one Range request per break and gives the same tokens", async () => {
  const server = await startServer({ mounts: { "/broken/": tiny("llama32") }, faults: { under: "/broken/", dropAfterBytes: 3 * MiB, drops: 4 } });
  const browser = await launchProfile();
  try {
    const out = await loadAndGenerate(browser, server, { hfBaseUrl: "/broken/" });
    assert.equal(out.error, undefined, out.error);
    assert.deepEqual(out.tokens, expected("llama32"));
    const ranged = server.requests.filter((r) => r.range);
    assert.equal(ranged.length, 4, `one Range request per break: ${JSON.stringify(ranged)}`);
    // Each asks for the rest of its file from what reached the disk (at most the 3 MiB sent:
    // bytes in flight when the connection drops may be lost), later ones further on.
    const starts = (file) => ranged.filter((r) => r.path === file).map((r) => Number(/^bytes=(\d+)-$/.exec(r.range)?.[1]));
    for (const file of new Set(ranged.map((r) => r.path))) {
      const s = starts(file);
      assert.ok(s.every((v, i) => v > 0 && v <= (i + 1) * 3 * MiB && (i === 0 || v > s[i - 1])), `${file}: ${s}`);
    }
    assert.ok(out.progress.some((p) => p.phase === "download" && p.resumedFrom > 0 && p.loaded > p.resumedFrom), "progress counts the resumed bytes");
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a server that ignores ranges still ends in a complete, correct file", async () => {
  const server = await startServer({ mounts: { "/no-ranges/": tiny("llama32") }, faults: { under: "/no-ranges/", dropAfterBytes: 5 * MiB, drops: 2, ignoreRanges: true } });
  const browser = await launchProfile();
  try {
    const out = await loadAndGenerate(browser, server, { hfBaseUrl: "/no-ranges/" });
    assert.equal(out.error, undefined, out.error);
    assert.deepEqual(out.tokens, expected("llama32"));
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a storage quota too small for the model gives a clear message and the page stays usable", async () => {
  const server = await startServer({ mounts: { "/model/": tiny("llama32") } });
  const browser = await launchProfile();
  try {
    const refused = await loadAndGenerate(browser, server, { hfBaseUrl: "/model/" }, { options: { testing: { storageQuota: 4 * MiB } } });
    assert.match(refused.error ?? "", /not enough browser storage for (tokenizer\.json|model\.safetensors): it needs \d+ MiB more, and \d+ MiB of this site's 4 MiB are free/);
    const fine = await loadAndGenerate(browser, server, { hfBaseUrl: "/model/" });
    assert.deepEqual(fine.tokens, expected("llama32"));
    // A second load reads the stored files: none of them crosses the network again (only the
    // optional files the folder lacks are asked for, and answered 404).
    const before = server.requests.length;
    const again = await loadAndGenerate(browser, server, { hfBaseUrl: "/model/" });
    assert.deepEqual(again.tokens, expected("llama32"));
    const stored = fs.readdirSync(tiny("llama32")).map((f) => `/model/${f}`);
    assert.deepEqual(server.requests.slice(before).filter((r) => stored.includes(r.path)), [], "served from OPFS");
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a load cancelled mid-download rejects at once, and the next load resumes from the stored bytes", async () => {
  const server = await startServer({ mounts: { "/stall/": tiny("llama32") }, faults: { under: "/stall/model.safetensors", stallAfterBytes: 2 * MiB, stalls: 1 } });
  const browser = await launchProfile();
  try {
    const { page, logs } = await openPage(browser, server.url);
    const cancelled = await page.evaluate(async () => {
      const { GuardReasoner } = await import("/www/guardreasoner.js");
      const abort = new AbortController();
      let abortedAt = 0;
      const onProgress = (p) => {
        // The weights are arriving (and will stall after 2 MiB, so the load cannot finish first).
        if (p.phase === "download" && /model\.safetensors/.test(p.file) && p.loaded > 0 && !abortedAt) {
          abortedAt = performance.now();
          abort.abort();
        }
      };
      try {
        const load = GuardReasoner.load({ hfBaseUrl: "/stall/" }, { backend: "cpu", quant: "none", context: 256, signal: abort.signal, onProgress });
        const late = new Promise((resolve) => setTimeout(() => resolve("still loading 20 s later"), 20000));
        return { error: await Promise.race([load.then(() => "the load finished"), late]) };
      } catch (e) {
        return { name: e.name, message: e.message, ms: performance.now() - abortedAt, aborted: abortedAt > 0 };
      }
    }).catch((e) => {
      throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
    });
    await page.close();
    assert.equal(cancelled.error, undefined, "the abort did not stop the load");
    assert.ok(cancelled.aborted, `never saw the weights arrive: ${JSON.stringify(cancelled)}`);
    assert.equal(cancelled.name, "AbortError", JSON.stringify(cancelled));
    assert.ok(cancelled.ms < 2000, `rejected ${cancelled.ms} ms after the abort`);
    const before = server.requests.length;
    const out = await loadAndGenerate(browser, server, { hfBaseUrl: "/stall/" });
    assert.equal(out.error, undefined, out.error);
    assert.deepEqual(out.tokens, expected("llama32"));
    const resumed = server.requests.slice(before).filter((r) => r.path === "/stall/model.safetensors" && r.range);
    assert.equal(resumed.length, 1, `the second load resumes: ${JSON.stringify(server.requests.slice(before))}`);
    assert.ok(Number(/^bytes=(\d+)-$/.exec(resumed[0].range)?.[1]) > 0, resumed[0].range);
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a Hub revision is pinned to its commit: a new commit downloads fresh files, offline uses the pin", async () => {
  const api = fs.mkdtempSync(path.join(os.tmpdir(), "gr-hub-"));
  const [shaA, shaB] = ["a".repeat(40), "b".repeat(40)];
  const revisionFile = path.join(api, "main.json");
  const revisionPath = "/api/models/acme/tiny-guard/revision/main";
  const unavailable = new Set();
  const server = await startServer({
    faults: { unavailable },
    mounts: { [revisionPath]: revisionFile, [`/acme/tiny-guard/resolve/${shaA}/`]: tiny("llama32"), [`/acme/tiny-guard/resolve/${shaB}/`]: tiny("classic") },
  });
  const browser = await launchProfile();
  const source = { hf: "acme/tiny-guard", hfEndpoint: server.url };
  try {
    fs.writeFileSync(revisionFile, JSON.stringify({ id: "acme/tiny-guard", sha: shaA }));
    const first = await loadAndGenerate(browser, server, source);
    assert.deepEqual(first.tokens, expected("llama32"), first.error);
    // Upstream moves main to a commit whose files differ: all of them come fresh.
    fs.writeFileSync(revisionFile, JSON.stringify({ id: "acme/tiny-guard", sha: shaB }));
    const mark = server.requests.length;
    const second = await loadAndGenerate(browser, server, source, { name: "classic" });
    assert.deepEqual(second.tokens, expected("classic"), second.error);
    const fetched = server.requests.slice(mark).map((r) => r.path);
    for (const file of ["config.json", "tokenizer.json", "model.safetensors"]) assert.ok(fetched.includes(`/acme/tiny-guard/resolve/${shaB}/${file}`), `${file} of the new commit: ${fetched}`);
    assert.ok(!fetched.some((p) => p.includes(shaA)), "nothing of the old commit is fetched or mixed in");
    // The Hub is down: the pinned commit's stored files load.
    unavailable.add(revisionPath);
    const offline = await loadAndGenerate(browser, server, source, { name: "classic" });
    assert.deepEqual(offline.tokens, expected("classic"), offline.error);
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a picked file loads through the same OPFS reader as a download and leaves nothing stored", async () => {
  const server = await startServer();
  const browser = await launchProfile();
  try {
    const { page, logs } = await openPage(browser, server.url);
    const out = await page
      .evaluate(async () => {
        const { GuardReasoner } = await import("/www/guardreasoner.js");
        const url = "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
        const file = new File([await (await fetch(url)).blob()], "SmolLM2-135M-Instruct.Q4_1.gguf");
        const run = async (source) => {
          const phases = new Set();
          const guard = await GuardReasoner.load(source, { backend: "cpu", context: 128, onProgress: (p) => phases.add(p.phase) });
          const res = await guard.generate(await guard.tokenize("The capital of France is"), { maxNewTokens: 6 });
          guard.terminate();
          return { tokens: res.tokens, phases: [...phases] };
        };
        const picked = await run({ file });
        const root = await navigator.storage.getDirectory();
        const models = await root.getDirectoryHandle("guardreasoner-models");
        const temporary = await models.getDirectoryHandle("temporary");
        const left = [];
        for await (const name of temporary.keys()) left.push(name);
        const downloaded = await run({ url });
        return { picked, downloaded, left };
      })
      .catch((e) => {
        throw new Error(`${e.message}\nbrowser log:\n${logs.join("\n")}`);
      });
    assert.ok(out.picked.phases.includes("copy"), `the picked file is copied into OPFS: ${out.picked.phases}`);
    assert.deepEqual(out.left, [], "the temporary copy is deleted once the model has loaded");
    assert.equal(out.picked.tokens.length, 6);
    assert.deepEqual(out.picked.tokens, out.downloaded.tokens);
  } finally {
    await browser.close();
    await server.stop();
  }
});
