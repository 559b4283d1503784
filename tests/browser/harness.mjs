// Shared set-up for the browser tests: the static server and headless Chromium with WebGPU on
// SwiftShader (or a real GPU when there is one), driven by playwright-core.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer as serve } from "../../scripts/serve.mjs";
import { launchChromium } from "../../scripts/browser.mjs";

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** The static server over the repository; `options` as scripts/serve.mjs takes them (mounts,
 * faults). `requests` records every request. */
export async function startServer(options = {}) {
  const { url, close, requests } = await serve({ root: repo, ...options });
  return { url, stop: close, requests };
}

export async function launch({ webgpu = true } = {}) {
  return launchChromium({ webgpu });
}

/** A page on the demo origin (cross-origin isolated), with every request URL recorded. */
export async function openPage(browser, base, pathAndQuery = "/www/") {
  const page = await browser.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(base + pathAndQuery);
  return { page, requests, logs };
}
