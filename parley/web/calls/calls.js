// The operator page: a list of call records with filters, and one call's facts, recording, latency
// per turn, timeline and transcript. Reads GET /v1/calls, /v1/calls/{id}, .../transcript, .../recording
// with the operator token when one is entered (kept for this tab only), as the server asks.
import { plotResponses } from "./plot.js";

const $ = (id) => document.getElementById(id);
const form = $("filters");
let cursor = null;
let selected = null;

form.token.value = sessionStorage.getItem("parley-operator-token") || "";

function headers() {
  const token = form.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `${response.status} ${response.statusText}`);
  }
  return response;
}

function setStatus(text, state = "") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

const clock = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const seconds = (s) => (s == null ? "–" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
const money = (usd) => (usd == null ? "–" : `$${usd.toFixed(usd < 0.01 ? 4 : 3)}`);
const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);

function query() {
  const params = new URLSearchParams({ limit: "25" });
  for (const name of ["agent", "reason"]) if (form[name].value.trim()) params.set(name, form[name].value.trim());
  for (const name of ["since", "until"]) {
    if (form[name].value) params.set(name, new Date(form[name].value).toISOString());
  }
  if (cursor) params.set("cursor", cursor);
  return params;
}

async function loadCalls(more = false) {
  if (!more) {
    cursor = null;
    $("calls").tBodies[0].replaceChildren();
  }
  setStatus("Loading…");
  try {
    const page = await (await api(`/v1/calls?${query()}`)).json();
    for (const call of page.calls) $("calls").tBodies[0].append(row(call));
    cursor = page.next_cursor;
    $("more").hidden = !cursor;
    const count = $("calls").tBodies[0].rows.length;
    setStatus(count ? `${count} call${count === 1 ? "" : "s"}, newest first` : "No calls match");
  } catch (error) {
    setStatus(`Could not read calls: ${error.message}`, "error");
  }
}

function row(call) {
  const tr = document.createElement("tr");
  tr.dataset.id = call.id;
  tr.tabIndex = 0;
  const cells = [clock(call.started_at), seconds(call.duration_s), call.agent || "–",
    call.end_reason || (call.state === "live" ? "live" : "–"), call.turns ?? "–",
    ms(call.latency?.response?.p50), money(call.cost_usd)];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = String(text);
    tr.append(td);
  }
  const open = () => showCall(call.id, tr);
  tr.addEventListener("click", open);
  tr.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return tr;
}

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

async function showCall(id, tr) {
  selected?.removeAttribute("aria-selected");
  selected = tr;
  tr.setAttribute("aria-selected", "true");
  try {
    const [call, transcript] = await Promise.all([
      api(`/v1/calls/${id}`).then((r) => r.json()),
      api(`/v1/calls/${id}/transcript`).then((r) => r.json()),
    ]);
    renderCall(call, transcript);
    await loadRecording(call);
  } catch (error) {
    setStatus(`Could not read call ${id.slice(0, 8)}: ${error.message}`, "error");
  }
}

function renderCall(call, transcript) {
  $("call").hidden = false;
  $("call-title").textContent = `Call ${call.id.slice(0, 12)}`;
  const facts = $("facts");
  facts.replaceChildren();
  const tokens = call.tokens || {};
  const byModality = (side) => Object.entries(tokens[side] || {}).map(([k, v]) => `${k.toLowerCase()} ${v}`).join(", ");
  fact(facts, "Started", clock(call.started_at));
  fact(facts, "Ended", `${clock(call.ended_at)} (${call.end_reason || "live"})`);
  fact(facts, "Duration", seconds(call.duration_s));
  fact(facts, "Cost (estimate)", money(call.cost_usd));
  fact(facts, "Tokens in", byModality("input") || "–");
  fact(facts, "Tokens out", byModality("output") || "–");
  fact(facts, "Agent", call.agent || "–");
  fact(facts, "Worker", call.worker || "–");
  const g = call.gemini || {};
  fact(facts, "Gemini", `${g.connections ?? 0} connection(s), ${g.reconnects ?? 0} reconnect(s), ${g.goaways ?? 0} goAway`);
  fact(facts, "Rejoins", String(call.rejoins ?? 0));
  const lat = call.latency || {};
  fact(facts, "Uplink p50/p95", `${ms(lat.uplink?.p50)} / ${ms(lat.uplink?.p95)}`);
  fact(facts, "Downlink p50/p95", `${ms(lat.downlink?.p50)} / ${ms(lat.downlink?.p95)}`);

  const started = Date.parse(call.started_at);
  const since = (iso) => `${((Date.parse(iso) - started) / 1000).toFixed(1)} s`;
  const timeline = $("timeline");
  timeline.replaceChildren();
  const turns = [];
  for (const event of transcript.timeline) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = since(event.at);
    li.append(time, describe(event));
    timeline.append(li);
    if (event.kind === "turn_start") turns.push({ turn: event.turn, ms: event.response_ms, interrupted: false });
    if (event.kind === "turn_end" && turns.length) turns[turns.length - 1].interrupted = Boolean(event.interrupted);
  }
  plotResponses($("plot"), turns);

  const conversation = $("transcript");
  conversation.replaceChildren();
  for (const entry of transcript.transcript) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = since(entry.at);
    li.append(time);
    if (entry.kind === "utterance") {
      li.className = entry.role;
      const text = document.createElement("span");
      text.textContent = entry.text;
      if (entry.interrupted) text.className = "interrupted";
      li.append(text);
    } else {
      li.className = "tool";
      li.append(toolText(entry));
    }
    conversation.append(li);
  }
}

function describe(event) {
  switch (event.kind) {
    case "turn_start": return `agent turn ${event.turn} starts (response ${ms(event.response_ms)})`;
    case "turn_end": return `agent turn ${event.turn} ends${event.interrupted ? ", interrupted" : ""}`;
    case "interrupted": return `interrupted by the caller (${event.source}, ${event.dropped_ms} ms dropped)`;
    case "connected": return `Gemini connected${event.resumed ? " (resumed)" : ""}`;
    case "reconnecting": return `Gemini reconnecting (code ${event.code}, attempt ${event.attempt})`;
    default: return event.kind.replaceAll("_", " ");
  }
}

function toolText(entry) {
  if (entry.kind === "tool_call") return `tool call ${entry.name}`;
  if (entry.kind === "tool_result") {
    const result = typeof entry.result === "string" ? entry.result : JSON.stringify(entry.result);
    return `${entry.name}(${JSON.stringify(entry.args)}) → ${result.slice(0, 200)}`;
  }
  if (entry.kind === "grounding") return `sources: ${entry.sources.map((s) => s.title || s.uri).join(", ")}`;
  return entry.kind;
}

async function loadRecording(call) {
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.removeAttribute("src");
  player.hidden = !call.recording;
  if (!call.recording) return;
  // fetched with the token (an <audio src> cannot send one), played from memory
  const blob = await (await api(call.recording)).blob();
  player.src = URL.createObjectURL(blob);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("parley-operator-token", form.token.value.trim());
  loadCalls();
});
$("more").addEventListener("click", () => loadCalls(true));
window.parleyCalls = { loadCalls, showCall };
loadCalls();
