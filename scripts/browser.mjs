// Headless Chromium for the evaluator and the browser tests, driven by npm playwright-core: the
// system Chromium, WebGPU on (a real GPU when there is one, SwiftShader's CPU emulation without),
// nothing that phones home.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

export function chromiumArgs({ webgpu = true } = {}) {
  const args = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];
  if (webgpu) args.push("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--ignore-gpu-blocklist");
  else args.push("--disable-gpu", "--disable-webgpu");
  return args;
}

/** A browser (`newPage()`, `close()`). With `profileDir` a persistent profile, so OPFS
 * (downloaded models) survives between runs. */
export async function launchChromium({ webgpu = true, profileDir = null } = {}) {
  const options = { executablePath: CHROMIUM, headless: true, args: chromiumArgs({ webgpu }) };
  try {
    if (profileDir) return await chromium.launchPersistentContext(profileDir, options);
    return await chromium.launch(options);
  } catch (e) {
    throw new Error(`cannot start Chromium at ${CHROMIUM} (install it: apt-get install chromium, or set CHROMIUM): ${e.message.split("\n")[0]}`);
  }
}
