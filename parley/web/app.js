// The join page: one call to the Parley server this page came from. The call logic is in
// parley-client.js (shared with the widget); this file only draws it.
import { Captions } from "./client/captions.js";
import { canShareScreen } from "./client/video.js";
import { ParleyClient, describe } from "./parley-client.js";

const $ = (id) => document.getElementById(id);
// A server that requires join tokens (PARLEY_JOIN_SECRET) is opened as /?token=...; /?agent=NAME
// calls that agent profile instead of the server's default.
const params = new URLSearchParams(location.search);
const client = new ParleyClient({
  audio: $("agent"),
  token: params.get("token"),
  agent: params.get("agent"),
  video: true, // Camera and Share screen swap tracks on the offer's one video m-line
  selfView: $("self-view"),
});
const captions = new Captions($("captions"));

// For tests and for anyone curious in the console.
window.parleyDebug = { client };

function setStatus(state, message) {
  $("status").textContent = message;
  $("status").dataset.state = state;
}

const ms = (value) => (typeof value === "number" ? `${value} ms` : "–");
// the browser's own share: "n/a" where this browser does not report it (null), "–" before a reading
const share = (value) => (value === null ? "n/a" : ms(value));

function showStats(stats) {
  $("v2v").textContent = ms(stats.voiceToVoiceMs);
  $("v2v-median").textContent = stats.turns ? `${ms(stats.voiceToVoiceMedianMs)} (${stats.turns} turn${stats.turns === 1 ? "" : "s"})` : "–";
  // under a tenth of a millisecond (loopback) says so rather than "0 ms"
  $("rtt").textContent = stats.rttMs === 0 ? "< 0.1 ms" : ms(stats.rttMs);
  $("jitter-buffer").textContent = ms(stats.jitterBufferMs);
  $("jitter-target").textContent = typeof stats.jitterBufferTargetMs === "number" ? `target ${stats.jitterBufferTargetMs} ms` : "";
  $("capture").textContent = share(stats.captureMs);
  $("playout").textContent = share(stats.playoutMs);
  $("packets-lost").textContent = stats.packetsLost ?? "–";
  $("concealed").textContent = stats.concealedSamples === undefined
    ? "–" : `${stats.concealedSamples}${stats.concealedPct !== undefined ? ` (${stats.concealedPct} %)` : ""}`;
}

client.addEventListener("state", ({ detail }) => {
  setStatus(detail.state, detail.message);
  const live = ["connecting", "in-call", "reconnecting"].includes(detail.state);
  $("call").disabled = live;
  $("hangup").disabled = !live;
  $("mute").disabled = !live;
  $("camera").disabled = !live;
  $("screen").disabled = !live;
  if (!live) {
    $("mute").setAttribute("aria-pressed", "false");
    captions.close();
    $("unlock").hidden = true;
    $("resume-mic").hidden = true;
  }
  if (detail.state === "ended" || detail.state === "error") $("call").focus();
});

client.addEventListener("transcript", ({ detail }) => captions.add(detail));
client.addEventListener("grounding", ({ detail }) => captions.sources(detail));
client.addEventListener("event", ({ detail }) => { if (detail.type === "interrupted") captions.interrupted(); });
client.addEventListener("speaking", ({ detail }) => {
  $("user-speaking").classList.toggle("on", detail.user);
  $("agent-speaking").classList.toggle("on", detail.agent);
});
client.addEventListener("video", ({ detail }) => {
  // An agent without video (its profile's `video = false`): no toggles, and the status says why.
  $("camera").hidden = !detail.available;
  $("screen").hidden = !detail.available || !canShareScreen();
  $("camera").setAttribute("aria-pressed", String(detail.source === "camera"));
  $("screen").setAttribute("aria-pressed", String(detail.source === "screen"));
  $("self-view").hidden = detail.state !== "on";
  $("video-status").textContent = detail.message;
  $("video-status").dataset.reason = detail.reason || "";
});
client.addEventListener("stats", ({ detail }) => showStats(detail));
client.addEventListener("autoplay", ({ detail }) => { $("unlock").hidden = !detail.blocked; });
client.addEventListener("error", ({ detail }) => setStatus("warning", detail.message));
// Phones: a call taking the microphone ends its track; the page says so and offers it back.
client.addEventListener("mic", ({ detail }) => {
  $("resume-mic").hidden = detail.state !== "interrupted";
  if (detail.state === "interrupted") {
    setStatus("warning", "The microphone was interrupted (a phone call or another app took it). The call is still on.");
  } else if (client.state === "in-call") {
    setStatus("in-call", detail.state === "switched" ? `In call (now using ${detail.label || "the new microphone"})` : "In call");
  }
});
client.addEventListener("visibility", ({ detail }) => {
  if (client.state !== "in-call" || client.micInterrupted) return;
  setStatus("in-call", detail.hidden ? "In call (in the background: the call goes on)" : "In call");
});
client.addEventListener("devices", ({ detail }) => {
  const select = $("device");
  const chosen = detail.deviceId || select.value;
  select.replaceChildren();
  detail.devices.forEach((device, index) => {
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `Microphone ${index + 1}`;
    select.append(option);
  });
  if (!detail.devices.length) select.append(new Option("Default microphone", ""));
  select.value = chosen;
  if (select.selectedIndex < 0) select.selectedIndex = 0;
});

$("call").addEventListener("click", () => {
  captions.clear();
  showStats({});
  client.start({ deviceId: $("device").value });
});
$("hangup").addEventListener("click", () => client.hangUp());
$("mute").addEventListener("click", () => {
  const muted = !client.muted;
  client.setMuted(muted);
  $("mute").setAttribute("aria-pressed", String(muted)); // the name stays "Mute": pressed means muted
});
// One source at a time: pressing the other one switches, pressing the pressed one turns video off.
for (const source of ["camera", "screen"]) {
  $(source).addEventListener("click", () => client.setVideo(client.video.source === source ? null : source));
}
$("screen").hidden = !canShareScreen();
$("device").addEventListener("change", () => client.setDevice($("device").value));
$("unlock").addEventListener("click", () => { client.unlockAudio(); $("unlock").hidden = true; });
$("resume-mic").addEventListener("click", () => { client.unlockAudio(); client.resumeMic(); });
navigator.mediaDevices?.addEventListener?.("devicechange", async () => {
  const devices = await ParleyClient.microphones().catch(() => []);
  client.dispatchEvent(new CustomEvent("devices", { detail: { devices, deviceId: $("device").value } }));
});

client.loadConfig().then((config) => {
  $("recorded").hidden = !config.recorded; // PARLEY_RECORD_AUDIO: callers are told before they speak
  if (config.emulator) {
    $("mode").hidden = false;
    $("mode").textContent = "Offline emulator mode: no Gemini key is set, so the agent echoes what you say after each turn.";
  }
}).catch((error) => setStatus("error", error.message || describe("error", "unreachable")));
