// Shared set-up for the browser tests: the static server and headless Chromium with WebGPU on
// SwiftShader (or a real GPU when there is one), driven by playwright-core.
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export async function startServer() {
  const proc = spawn(process.execPath, [path.join(repo, "scripts/serve.mjs"), "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/http:\/\/127\.0\.0\.1:\d+/);
      if (m) resolve(m[0]);
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { url, stop: () => proc.kill() };
}

export async function launch({ webgpu = true } = {}) {
  const args = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];
  if (webgpu) args.push("--enable-unsafe-webgpu", "--enable-features=Vulkan");
  else args.push("--disable-gpu", "--disable-webgpu");
  return chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args });
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
