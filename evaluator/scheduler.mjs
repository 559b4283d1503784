// The evaluator's item scheduler: which of a dataset's items goes to the page next, how many at
// once, what a failure counts as, when Chromium must start again, and when an item is written as
// failed; lines are handed on in benchmark order. ARCHITECTURE.md "Surviving crashes and hangs" is
// its contract; which items a run has (--limit, --shard, the resume point) the core decides
// (src/guard/run.rs) before it starts.

// The automatic --item-timeout: TIMEOUT_FACTOR times the longest answer (--max-new-tokens) at the
// slowest rate seen so far (wall time from hand-off, queueing and prefill included, per new
// token), at least MIN_ITEM_TIMEOUT_S; FIRST_ITEM_TIMEOUT_S until an item has finished.
export const TIMEOUT_FACTOR = 10;
export const MIN_ITEM_TIMEOUT_S = 60;
export const FIRST_ITEM_TIMEOUT_S = 3600;

/** The --item-timeout in force: fixed, or from the slowest rate seen so far. */
export function itemTimeout(opts) {
  let secondsPerToken = null;
  return {
    seconds: () => opts.itemTimeout ?? (secondsPerToken === null ? FIRST_ITEM_TIMEOUT_S : Math.max(MIN_ITEM_TIMEOUT_S, TIMEOUT_FACTOR * opts.maxNewTokens * secondsPerToken)),
    /** An item done `wall` seconds after its hand-off, with `newTokens` new tokens. */
    observe(wall, newTokens) {
      secondsPerToken = Math.max(secondsPerToken ?? 0, wall / Math.max(newTokens, 1));
    },
  };
}

/** Runs items 0..count-1 and resolves once each one's outcome has been written, in order.
 * - `attempt(k, handOffs)` hands item k to the current page (`handOffs`: how often it was handed
 *   before; the test hook's faults fire on the first); resolves to `{r}` (`r.newTokens` is read)
 *   or `{error}`.
 * - `lost(error)`: why the browser must start again after this error, or null when the item alone
 *   is at fault.
 * - `restart(why)`: a new browser with the model loaded.
 * - `write(k, outcome)`: item k's line, `outcome` being `{r}` or `{failed: why}`.
 * - `timeout`: an `itemTimeout`, kept across datasets; `itemName(k)` names an item in messages. */
export async function scheduleItems({ count, batch, maxAttempts, timeout, attempt, lost, restart, write, itemName }) {
  // Up to twice the batch of items in flight, so the worker always has the next one waiting
  // when a place frees up. An item that failed once is a suspect: it runs alone.
  const done = new Map(); // k -> {r} | {failed: why}
  const failures = new Map(); // k -> reasons, one per failed attempt
  const retry = new Set(); // suspects waiting to run again
  const inFlight = new Map(); // k -> its promise (resolves when its outcome is recorded)
  const inFlightMax = Math.max(1, 2 * batch);
  const handOffs = new Map(); // k -> times handed to a page (the test hook's faults fire on the first)
  let next = 0; // the first item never started
  let written = 0; // items whose line is written
  let restartFor = null; // why the browser must start again
  let epoch = 0; // bumped at each restart: outcomes of an older browser are ignored
  const fail = (k, why) => {
    const reasons = [...(failures.get(k) ?? []), why];
    failures.set(k, reasons);
    if (reasons.length >= maxAttempts) done.set(k, { failed: `${why} (${reasons.length} attempt${reasons.length > 1 ? "s" : ""})` });
    else retry.add(k);
  };
  const runItem = async (k) => {
    const mine = epoch;
    const handedOff = performance.now();
    const limit = timeout.seconds();
    let timer;
    const timedOut = new Promise((resolve) => (timer = setTimeout(() => resolve({ timeout: true }), limit * 1000)));
    const answer = attempt(k, handOffs.get(k) ?? 0);
    handOffs.set(k, (handOffs.get(k) ?? 0) + 1);
    const outcome = await Promise.race([answer, timedOut]);
    clearTimeout(timer);
    if (mine !== epoch) return; // this browser is gone; the item was counted at the restart
    if (outcome.r) {
      timeout.observe((performance.now() - handedOff) / 1000, outcome.r.newTokens);
      done.set(k, { r: outcome.r });
    } else if (outcome.timeout) {
      fail(k, `no answer within ${limit.toFixed(0)} s (--item-timeout)`);
      restartFor ??= `${itemName(k)} took longer than ${limit.toFixed(0)} s`;
    } else {
      const why = lost(outcome.error);
      if (why !== null) {
        fail(k, why);
        restartFor ??= why;
      } else {
        fail(k, outcome.error);
      }
    }
  };
  const start = () => {
    while (restartFor === null) {
      const candidate = retry.size > 0 ? Math.min(...retry) : next < count ? next : null;
      if (candidate === null) return;
      if ([...inFlight.keys()].some((k) => failures.has(k))) return; // a suspect runs alone
      if (failures.has(candidate) ? inFlight.size > 0 : inFlight.size >= inFlightMax) return;
      if (retry.has(candidate)) retry.delete(candidate);
      else next += 1;
      const promise = runItem(candidate).finally(() => inFlight.get(candidate) === promise && inFlight.delete(candidate));
      inFlight.set(candidate, promise);
    }
  };
  const restartBrowser = async () => {
    const why = restartFor;
    epoch += 1;
    for (const k of inFlight.keys()) fail(k, `Chromium was restarted while it ran (${why})`);
    inFlight.clear();
    await restart(why);
    restartFor = null;
  };
  start();
  while (written < count) {
    const k = written;
    if (restartFor !== null) {
      await restartBrowser();
      start();
      continue;
    }
    if (!done.has(k)) {
      if (inFlight.size === 0) throw new Error(`internal error: ${itemName(k)} is neither done nor running`);
      await Promise.race(inFlight.values());
      start();
      continue;
    }
    const outcome = done.get(k);
    done.delete(k);
    await write(k, outcome);
    written += 1;
    start();
  }
}
