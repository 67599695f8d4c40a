// The join page: one call to the Parley server this page came from.
const $ = (id) => document.getElementById(id);
let pc = null;
let callUrl = null;

function setStatus(text) { $("status").textContent = text; }

function caption(role, text) {
  const list = $("captions");
  const last = list.lastElementChild;
  if (last && last.className === role) { last.textContent += text; return; }
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  list.append(item);
}

async function loadConfig() {
  const response = await fetch("/v1/config");
  return response.json();
}

async function startCall() {
  $("call").disabled = true;
  setStatus("Connecting…");
  let mic;
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (error) {
    setStatus(error.name === "NotAllowedError" ? "Microphone access was denied." : "No microphone found.");
    $("call").disabled = false;
    return;
  }
  const config = await loadConfig();
  pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
  mic.getTracks().forEach((track) => pc.addTrack(track, mic));
  pc.ontrack = (event) => { $("agent").srcObject = event.streams[0] || new MediaStream([event.track]); };
  const events = pc.createDataChannel("events");
  events.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "transcript") caption(event.role, event.text);
    if (event.type === "ended") setStatus(`Call ended: ${event.reason}`);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") setStatus("In call");
    if (pc.connectionState === "failed") setStatus("Connection failed");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  const response = await fetch("/v1/calls", {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp,
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    setStatus(response.status === 503 ? "The server is busy. Try again soon." : `Call refused: ${body.error || response.status}`);
    hangUp(false);
    return;
  }
  callUrl = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  $("hangup").disabled = false;
}

async function hangUp(tellServer = true) {
  if (tellServer && callUrl) await fetch(callUrl, { method: "DELETE" }).catch(() => {});
  if (pc) pc.getSenders().forEach((sender) => sender.track && sender.track.stop());
  if (pc) pc.close();
  pc = null;
  callUrl = null;
  $("call").disabled = false;
  $("hangup").disabled = true;
}

$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", () => { hangUp(); setStatus("Call ended"); });
loadConfig().then((config) => {
  if (config.emulator) {
    $("mode").hidden = false;
    $("mode").textContent = "Offline emulator mode: no Gemini key is set, so the agent echoes what you say after each turn.";
  }
});
