// The evaluator's item scheduler (evaluator/scheduler.mjs) without a browser: a fake page whose
// answers the test gives one by one. It checks what the scheduler decides: twice the batch in
// flight, lines in benchmark order whatever order answers come in, a suspect run alone and before
// new items, a failed line after --max-attempts, a restart that counts an attempt against every
// item in flight and ignores the old browser's answers, the item timeout. Fast: no browser, no model.
import { test } from "node:test";
import assert from "node:assert/strict";
import { scheduleItems, itemTimeout, FIRST_ITEM_TIMEOUT_S, MIN_ITEM_TIMEOUT_S, TIMEOUT_FACTOR } from "../../evaluator/scheduler.mjs";

// Long enough that no test here meets it unless it asks to (see the timeout test).
const NO_TIMEOUT_S = 60;
// A run whose items are all answered ends within a few turns of the event loop; this is the
// most a test waits for that, so a broken scheduler fails the test rather than hanging it.
const RUN_END_MS = 2000;

/** A scheduler over `count` items and a fake page. `events` records, in order, `start k` (`start k/n`
 * when handed off again, n being how often before), `write k` and `restart: why`;
 * `answer(k, outcome)` answers item k's latest hand-off, `answerHandOff(k, n, outcome)` the one
 * after n before; `limit.seconds` is the item timeout at the next hand-off. */
function schedule(t, { count, batch = 1, maxAttempts = 3, seconds = NO_TIMEOUT_S }) {
  const limit = { seconds };
  const events = [];
  const calls = new Map(); // "k/n" -> resolve of that hand-off
  const written = new Map(); // k -> outcome
  const observed = []; // newTokens of each observed item
  let running = 0; // hand-offs not answered
  let mostRunning = 0;
  // After the test, whatever is unanswered fails at once, so a failed test's run ends now rather
  // than through its timeouts.
  let abandoned = false;
  t.after(() => {
    abandoned = true;
    for (const resolve of calls.values()) resolve({ error: "abandoned" });
    calls.clear();
  });
  const timeout = {
    seconds: () => limit.seconds,
    observe: (_wall, newTokens) => observed.push(newTokens),
  };
  const finished = scheduleItems({
    count,
    batch,
    maxAttempts,
    timeout,
    itemName: (k) => `item ${k}`,
    attempt: (k, handOffs) =>
      new Promise((resolve) => {
        events.push(handOffs === 0 ? `start ${k}` : `start ${k}/${handOffs}`);
        if (abandoned) return resolve({ error: "abandoned" });
        running += 1;
        mostRunning = Math.max(mostRunning, running);
        calls.set(`${k}/${handOffs}`, (outcome) => {
          running -= 1;
          resolve(outcome);
        });
      }),
    // "lost: why" is an error that means the browser is gone, for that reason.
    lost: (error) => (error.startsWith("lost: ") ? error.slice("lost: ".length) : null),
    restart: async (why) => {
      events.push(`restart: ${why}`);
    },
    write: async (k, outcome) => {
      events.push(`write ${k}`);
      written.set(k, outcome);
    },
  });
  finished.catch(() => {}); // a failed test may leave it unawaited; finish() still sees how it ended
  // Lets the scheduler act on what was answered (its promises settle over a few turns).
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const answerHandOff = async (k, n, outcome) => {
    const key = `${k}/${n}`;
    assert.ok(calls.has(key), `item ${k} is waiting for an answer to its hand-off after ${n} (events: ${events.join(", ")})`);
    calls.get(key)(outcome);
    calls.delete(key);
    await settle();
    await settle();
  };
  const answer = (k, outcome) => {
    const n = Math.max(...[...calls.keys()].filter((key) => key.startsWith(`${k}/`)).map((key) => Number(key.split("/")[1])));
    return answerHandOff(k, n, outcome);
  };
  /** The run's end, which comes at once when the test has answered what it should; every
   * hand-off answered (none left holding a timer). */
  const finish = async () => {
    let timer;
    const late = new Promise((resolve) => (timer = setTimeout(() => resolve(false), RUN_END_MS)));
    const ended = await Promise.race([finished.then(() => true), late]);
    clearTimeout(timer);
    assert.ok(ended, `the run ended (events: ${events.join(", ")})`);
    assert.deepEqual([...calls.keys()], [], "every hand-off answered");
  };
  return { limit, events, written, observed, finish, answer, answerHandOff, settle, mostRunning: () => mostRunning };
}

const ok = (k) => ({ r: { newTokens: 10 + k, line: `line ${k}\n` } });
// An answer from a browser the scheduler has given up on.
const STALE = { r: { newTokens: 99, line: "stale\n" } };

test("twice the batch in flight, lines written in benchmark order whatever order answers come in", async (t) => {
  const s = schedule(t, { count: 6, batch: 2 });
  await s.settle();
  assert.deepEqual(s.events, ["start 0", "start 1", "start 2", "start 3"], "four items (twice the batch) handed off at once");
  await s.answer(3, ok(3));
  await s.answer(2, ok(2));
  await s.answer(1, ok(1));
  assert.deepEqual(s.events.slice(4), ["start 4", "start 5"], "each answer frees a place for the next item; nothing is written before item 0");
  await s.answer(0, ok(0));
  assert.deepEqual(s.events.slice(6), ["write 0", "write 1", "write 2", "write 3"], "item 0 done: it and those waiting behind it are written, in order");
  await s.answer(5, ok(5));
  await s.answer(4, ok(4));
  await s.finish();
  assert.deepEqual(s.events.slice(10), ["write 4", "write 5"]);
  assert.equal(s.mostRunning(), 4, "never more than twice the batch in flight");
  assert.deepEqual([...s.written.keys()], [0, 1, 2, 3, 4, 5]);
  assert.deepEqual([...s.written.values()], [0, 1, 2, 3, 4, 5].map(ok), "each item's own answer is written");
  assert.deepEqual(s.observed, [13, 12, 11, 10, 15, 14], "each answer's rate is observed for the item timeout");
});

test("batch 1 keeps two items in flight", async (t) => {
  const s = schedule(t, { count: 3, batch: 1 });
  await s.settle();
  assert.deepEqual(s.events, ["start 0", "start 1"]);
  for (const k of [0, 1, 2]) await s.answer(k, ok(k));
  await s.finish();
  assert.equal(s.mostRunning(), 2);
  assert.deepEqual(s.events, ["start 0", "start 1", "start 2", "write 0", "write 1", "write 2"]);
});

test("an item whose request fails is a suspect: it runs again alone, before the items after it", async (t) => {
  const s = schedule(t, { count: 4, batch: 1 });
  await s.settle();
  await s.answer(0, { error: "bad item" });
  assert.deepEqual(s.events, ["start 0", "start 1"], "the suspect waits until nothing else is in flight; no new item starts meanwhile");
  await s.answer(1, ok(1));
  assert.deepEqual(s.events.slice(2), ["start 0/1"], "then it runs again, alone, before item 2");
  await s.settle();
  assert.deepEqual(s.events.slice(3), [], "nothing starts beside a suspect");
  await s.answer(0, ok(0));
  assert.deepEqual(s.events.slice(3), ["start 2", "start 3", "write 0", "write 1"], "its success opens the window again");
  await s.answer(2, ok(2));
  await s.answer(3, ok(3));
  await s.finish();
  assert.deepEqual(s.written.get(0), ok(0), "the retry's answer is written");
  assert.equal(s.mostRunning(), 2);
});

test("an item that fails --max-attempts times is written as failed, with the last reason and the count, and the run goes on", async (t) => {
  const s = schedule(t, { count: 2, batch: 1, maxAttempts: 3 });
  await s.settle();
  await s.answer(1, ok(1));
  await s.answer(0, { error: "first" });
  await s.answer(0, { error: "second" });
  await s.answer(0, { error: "third" });
  await s.finish();
  assert.deepEqual(s.events, ["start 0", "start 1", "start 0/1", "start 0/2", "write 0", "write 1"], "three tries, then its line");
  assert.deepEqual(s.written.get(0), { failed: "third (3 attempts)" });
  assert.deepEqual(s.written.get(1), ok(1));

  const once = schedule(t, { count: 1, maxAttempts: 1 });
  await once.settle();
  await once.answer(0, { error: "broken" });
  await once.finish();
  assert.deepEqual(once.written.get(0), { failed: "broken (1 attempt)" }, "one attempt, in the singular");
});

test("a lost browser: one restart, an attempt counted against every item in flight, the old browser's answers ignored, the suspects run one at a time, lowest first", async (t) => {
  const s = schedule(t, { count: 5, batch: 2, maxAttempts: 2 });
  await s.settle();
  assert.deepEqual(s.events, ["start 0", "start 1", "start 2", "start 3"]);
  await s.answer(2, { error: "lost: the page crashed" });
  assert.deepEqual(s.events.slice(4), ["restart: the page crashed", "start 0/1"], "one restart, then the suspects again, the lowest first, alone");
  // The old browser answers late: the scheduler counted these items at the restart.
  await s.answerHandOff(3, 0, STALE);
  await s.answerHandOff(0, 0, { error: "lost: Target closed" });
  await s.answerHandOff(1, 0, STALE);
  assert.deepEqual(s.events.slice(6), [], "late answers change nothing: no write, no second restart");
  await s.answer(0, ok(0));
  assert.deepEqual(s.events.slice(6), ["start 1/1", "write 0"]);
  await s.answer(1, { error: "bad item" });
  assert.deepEqual(s.events.slice(8), ["start 2/1", "write 1"], "item 1's second failure (the restart was its first) fails it for good");
  await s.answer(2, ok(2));
  assert.deepEqual(s.events.slice(10), ["start 3/1", "write 2"]);
  await s.answer(3, ok(3));
  assert.deepEqual(s.events.slice(12), ["start 4", "write 3"], "no suspect left: new items again");
  await s.answer(4, ok(4));
  await s.finish();
  assert.deepEqual(s.events.slice(14), ["write 4"]);
  assert.deepEqual([...s.written.values()], [ok(0), { failed: "bad item (2 attempts)" }, ok(2), ok(3), ok(4)], "the new browser's answers, never the old one's");
  assert.deepEqual(s.observed, [10, 12, 13, 14], "the old browser's late answers are not observed");
});

test("an item in flight at a restart whose attempts run out is written as failed with the restart's reason", async (t) => {
  const s = schedule(t, { count: 2, batch: 1, maxAttempts: 1 });
  await s.settle();
  await s.answer(1, { error: "lost: Chromium closed" });
  await s.answerHandOff(0, 0, { error: "lost: Target closed" });
  await s.finish();
  assert.deepEqual(s.events, ["start 0", "start 1", "restart: Chromium closed", "write 0", "write 1"]);
  assert.deepEqual(s.written.get(0), { failed: "Chromium was restarted while it ran (Chromium closed) (1 attempt)" });
  assert.deepEqual(s.written.get(1), { failed: "Chromium closed (1 attempt)" });
});

test("an item without an answer within the item timeout counts as a hung page: a failed attempt and a restart", async (t) => {
  const s = schedule(t, { count: 1, maxAttempts: 2, seconds: 0.05 });
  await s.settle();
  s.limit.seconds = NO_TIMEOUT_S; // for the hand-off after the restart
  await new Promise((resolve) => setTimeout(resolve, 200));
  await s.settle();
  assert.deepEqual(s.events, ["start 0", "restart: item 0 took longer than 0 s", "start 0/1"]);
  await s.answerHandOff(0, 0, ok(0)); // the hung page's answer, too late
  await s.answer(0, ok(0));
  await s.finish();
  assert.deepEqual(s.events.slice(3), ["write 0"]);
  assert.deepEqual(s.observed, [10], "only the new page's answer is observed");

  const hung = schedule(t, { count: 1, maxAttempts: 1, seconds: 0.05 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  await hung.answerHandOff(0, 0, ok(0)); // too late
  await hung.finish();
  assert.deepEqual(hung.events, ["start 0", "restart: item 0 took longer than 0 s", "write 0"]);
  assert.deepEqual(hung.written.get(0), { failed: "no answer within 0 s (--item-timeout) (1 attempt)" });
});

test("the automatic item timeout: an hour until an item finishes, then ten times the longest answer at the slowest rate seen, at least a minute", () => {
  const maxNewTokens = 100;
  const auto = itemTimeout({ itemTimeout: null, maxNewTokens });
  assert.equal(auto.seconds(), FIRST_ITEM_TIMEOUT_S);
  auto.observe(20, 100); // 0.2 s a token
  assert.equal(auto.seconds(), TIMEOUT_FACTOR * maxNewTokens * 0.2);
  auto.observe(1, 100); // faster: the slowest rate stands
  assert.equal(auto.seconds(), TIMEOUT_FACTOR * maxNewTokens * 0.2);
  auto.observe(3, 0); // no new token counts as one
  assert.equal(auto.seconds(), TIMEOUT_FACTOR * maxNewTokens * 3);

  const quick = itemTimeout({ itemTimeout: null, maxNewTokens });
  quick.observe(0.01, 100);
  assert.equal(quick.seconds(), MIN_ITEM_TIMEOUT_S, "never below the minimum");

  const fixed = itemTimeout({ itemTimeout: 7, maxNewTokens });
  assert.equal(fixed.seconds(), 7);
  fixed.observe(1000, 1);
  assert.equal(fixed.seconds(), 7, "--item-timeout, when given, stands");
});
