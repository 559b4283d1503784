// Headless Chromium with the evaluator's page (evaluator/page.html) open: started, watched for a
// crash or a close, closed (killed when it will not close), and what Playwright's errors mean.
// Which Chromium, and its flags: scripts/browser.mjs.
import fs from "node:fs";
import { launchChromium } from "../scripts/browser.mjs";
import { GPU_LOST_PREFIX } from "../www/protocol.js";

const PAGE = "/evaluator/page.html";
// A browser that does not close within this is killed.
const CLOSE_TIMEOUT_MS = 15_000;

// What Playwright says when the browser or the page is gone.
const BROWSER_LOST = /Target crashed|has been closed|Target closed|Browser closed|browser has disconnected|page crashed/i;
export const browserLost = (e) => BROWSER_LOST.test(String(e?.message ?? e));

/** Headless Chromium with the evaluator page open and ready; `tab.gone` says why once the page
 * or the browser is lost (a crash, a close). */
export async function openTab(opts, server, handlers) {
  const browser = await launchChromium({ webgpu: opts.backend !== "cpu", profileDir: opts.profile }).catch((e) => {
    const missing = /doesn't exist|ENOENT|no such file/i.test(e.message);
    throw new Error(missing ? e.message : `${e.message} (is another run using the same --profile ${opts.profile}? give each its own)`);
  });
  const tab = { browser, page: null, gone: null };
  const lose = (why) => (tab.gone ??= why);
  browser.on("close", () => lose("Chromium closed"));
  try {
    const page = await browser.newPage();
    tab.page = page;
    page.on("crash", () => lose("the page crashed"));
    page.on("close", () => lose("the page closed (did Chromium end?)"));
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => m.type() === "error" && pageErrors.push(m.text()));
    await page.exposeFunction("evaluatorProgress", (p) => handlers.progress(p));
    await page.exposeFunction("evaluatorTokens", (n) => handlers.tokens(n));
    await page.goto(`${server.url}${PAGE}`);
    await page.waitForFunction(() => window.evaluatorReady === true, null, { timeout: 60_000 }).catch((e) => {
      throw new Error(`the evaluator page did not start: ${pageErrors.join("; ") || cleanMessage(e)}`);
    });
  } catch (e) {
    await closeTab(tab);
    throw e;
  }
  return tab;
}

/** Closes the browser; one that does not close in time (a hung renderer) is killed. */
export async function closeTab(tab) {
  tab.gone ??= "closed by the evaluator";
  let timer;
  const closed = await Promise.race([
    tab.browser.close().then(
      () => true,
      () => true,
    ),
    new Promise((resolve) => (timer = setTimeout(() => resolve(false), CLOSE_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (!closed) killDescendants(process.pid);
}

/** SIGKILL to every process below `pid` (Linux /proc): a browser that would not close. */
function killDescendants(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync("/proc", { withFileTypes: true })) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
      const stat = fs.readFileSync(`/proc/${entry.name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry.name)]);
    } catch {
      // gone meanwhile
    }
  }
  const below = (p) => (children.get(p) ?? []).flatMap((c) => [c, ...below(c)]);
  for (const p of below(pid)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
}

/** Whether a failure means the browser must start again (rather than the item being at fault). */
export function needsRestart(tab, message) {
  return tab.gone !== null || message.startsWith(GPU_LOST_PREFIX) || browserLost(message);
}

/** The test hook's fault for an item's attempt, if any (GUARDREASONER_EVALUATOR_FAULTS, options.mjs). */
export async function injectFault(tab, opts, key, attempt) {
  const kind = opts.faults.get(key);
  if (!kind || (attempt > 0 && !kind.endsWith("-always"))) return;
  const page = tab.page;
  const fault = kind.replace(/-always$/, "");
  if (fault === "hang") await page.evaluate(() => void setTimeout(() => { for (;;); }));
  else if (fault === "crash") await (await tab.browser.newCDPSession(page)).send("Page.crash").catch(() => {});
  else if (fault === "lose-gpu") await page.evaluate(() => window.evaluator.loseGpu());
}

/** Playwright wraps page errors ("page.evaluate: Error: ..."); keep the message a person needs. */
export function cleanMessage(e) {
  return String(e?.message ?? e)
    .replace(/^page\.evaluate: /, "")
    .replace(/^\w*Error: /, "")
    .split("\n")[0];
}
