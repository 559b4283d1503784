// A chat room whose every message is moderated as it is sent, all in the browser: a user's message
// is checked as a request, an assistant's as the response to the last user message. Checks made
// while others run share the model's batch (concurrent `moderate` calls). Each message gets a
// verdict badge, its reasoning one click away. Model and user text are set as text, never HTML.
// The address takes ?model= (repo id or URL), ?backend=, ?quant= and ?max= (new tokens) as the
// demo does.
import { GuardReasoner } from "./guardreasoner.js";
import { BACKENDS, DEFAULTS, QUANTS } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const maxNewTokens = Math.max(1, Number(query.get("max")) || DEFAULTS.maxNewTokens);
let guard = null;
let lastUserText = null; // what an assistant's message answers

function source(text) {
  if (text.includes("://") || text.startsWith("/")) return { url: new URL(text, location.href).href };
  return { hf: text };
}

/** The badge of a finished check: the verdict that matters for the message's role. */
function verdictBadge(role, result) {
  const b = document.createElement("span");
  let value;
  let label;
  if (!result.verdictFound) [value, label] = ["none", "no verdict"];
  else if (role === "user") [value, label] = [result.request, `request ${result.request}`];
  else [value, label] = [result.response, `response ${result.response}${result.completion ? ` (${result.completion})` : ""}`];
  b.className = `badge ${value ?? "none"}`;
  b.textContent = label;
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
  try {
    const result = await guard.moderate(conversation, { maxNewTokens, onEvent: (e) => e.type === "token" && (reasoning.textContent += e.text) });
    badge.replaceWith(verdictBadge(role, result));
  } catch (e) {
    badge.className = "badge none";
    badge.textContent = "not checked";
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
  const model = query.get("model") || "yueliu1999/GuardReasoner-1B";
  const backend = BACKENDS.includes(query.get("backend")) ? query.get("backend") : DEFAULTS.backend;
  const quant = QUANTS.includes(query.get("quant")) ? query.get("quant") : DEFAULTS.quant;
  const bar = $("load-progress");
  try {
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
