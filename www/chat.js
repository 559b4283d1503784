// A chat room whose every message is moderated as it is sent, all in the browser: a user's message
// is checked as a request, an assistant's as the response to the last user message. Checks made
// while others run share the model's batch (concurrent `moderate` calls). Each message gets a
// verdict badge, its reasoning one click away. Model and user text are set as text, never HTML.
// The address takes ?model= (repo id or URL), ?backend=, ?quant=, ?max= (new tokens) and
// ?mode=verdict-first as the demo does. With "Verdict first" a message gets a provisional badge at
// once (the verdicts without reasoning), which the reasoned verdict then replaces.
import { GuardReasoner } from "./guardreasoner.js";
import { BACKENDS, DEFAULTS, DEFAULT_MODEL, MODES, QUANTS, queryWord } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const maxNewTokens = Math.max(1, Number(query.get("max")) || DEFAULTS.maxNewTokens);
let guard = null;
let lastUserText = null; // what an assistant's message answers

function source(text) {
  if (text.includes("://") || text.startsWith("/")) return { url: new URL(text, location.href).href };
  return { hf: text };
}

/** The verdict that matters for a message's role: the request's for a user, the response's
 * for an assistant. */
const verdictOf = (role, result) => (role === "user" ? result.request : result.response);

/** The badge of a finished check, with the model's P(harmful) beside the verdict; `provisional`
 * marks a verdict-first answer that the reasoning will replace. */
function verdictBadge(role, result, provisional = false) {
  const b = document.createElement("span");
  const value = verdictOf(role, result);
  let label;
  if (!result.verdictFound) label = "no verdict";
  else if (role === "user") label = `request ${result.request}`;
  else label = `response ${result.response}${result.completion ? ` (${result.completion})` : ""}`;
  b.className = `badge ${result.verdictFound ? (value ?? "none") : "none"}${provisional ? " provisional" : ""}`;
  b.textContent = provisional ? `${label} (provisional)` : label;
  const score = result.scores?.[role === "user" ? "request" : "response"];
  if (result.verdictFound && typeof score === "number") {
    const s = document.createElement("small");
    s.className = "score";
    s.textContent = `P(harmful) ${score.toFixed(2)}`;
    b.append(s);
  }
  return b;
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || !guard) return;
  const role = $("speaker").value;
  $("message").value = "";
  // The next message is usually the other side's.
  $("speaker").value = role === "user" ? "assistant" : "user";
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const who = document.createElement("strong");
  who.textContent = role === "user" ? "User" : "Assistant";
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  const badge = document.createElement("span");
  badge.className = "badge pending";
  badge.textContent = "checking…";
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const reasoning = document.createElement("pre");
  reasoning.className = "raw";
  details.append(summary, reasoning);
  item.append(who, " ", body, " ", badge, details);
  $("messages").append(item);
  const conversation = role === "user" ? { prompt: text } : { prompt: lastUserText ?? "(no message)", response: text };
  if (role === "user") lastUserText = text;
  let shown = badge;
  try {
    let provisional = null;
    if ($("verdict-first").checked) {
      provisional = await guard.moderate(conversation, { mode: "verdict-first" });
      const first = verdictBadge(role, provisional, true);
      shown.replaceWith(first);
      shown = first;
    }
    const result = await guard.moderate(conversation, { maxNewTokens, onEvent: (e) => e.type === "token" && (reasoning.textContent += e.text) });
    const final = verdictBadge(role, result);
    shown.replaceWith(final);
    shown = final;
    if (provisional && verdictOf(role, provisional) !== verdictOf(role, result)) {
      const note = document.createElement("small");
      note.className = "status changed";
      note.textContent = ` the reasoning changed the provisional verdict (${verdictOf(role, provisional) ?? "none"} → ${verdictOf(role, result) ?? "none"})`;
      final.after(note);
    }
  } catch (e) {
    const failed = document.createElement("span");
    failed.className = "badge none";
    failed.textContent = "not checked";
    shown.replaceWith(failed);
    reasoning.textContent = e.message;
    if (e.name === "GpuLostError") {
      guard = null;
      $("message").disabled = $("send").disabled = true;
      showError(`${e.message}. Reload the page with ?backend=cpu to go on on the CPU.`);
    }
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message;
}

async function start() {
  const model = query.get("model") || DEFAULT_MODEL;
  const bar = $("load-progress");
  try {
    const backend = queryWord(query, "backend", BACKENDS) ?? DEFAULTS.backend;
    const quant = queryWord(query, "quant", QUANTS) ?? DEFAULTS.quant;
    // ?mode=verdict-first starts with "Verdict first" ticked.
    $("verdict-first").checked = (queryWord(query, "mode", MODES) ?? DEFAULTS.mode) === "verdict-first";
    guard = await GuardReasoner.load(source(model), {
      backend,
      quant,
      onProgress: (p) => {
        bar.max = p.total || 1;
        bar.value = p.loaded ?? 0;
        $("load-status").textContent = `${p.phase === "load" ? "Loading weights" : `Fetching ${p.file ?? "the model"}`}…`;
      },
    });
    $("load-status").textContent = `Ready: ${model} on ${guard.backend}, up to ${guard.batch} checks at once.`;
    $("message").disabled = $("send").disabled = false;
    $("message").focus();
  } catch (e) {
    $("load-status").textContent = "No model loaded.";
    showError(`Could not load ${model}: ${e.message}`);
  } finally {
    bar.hidden = true;
  }
}

// The loaded model, for the browser console and the tests.
globalThis.guardReasonerChat = {
  get guard() {
    return guard;
  },
};
$("composer").addEventListener("submit", send);
start();
