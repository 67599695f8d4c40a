// Parley's browser side, shared by the join page (app.js) and the widget (widget.js).
//
// One ParleyClient makes one call at a time to a Parley server: microphone, peer connection, the
// `events` data channel, reconnection, speaking detection, voice-to-voice delay and getStats().
// It has no UI: it dispatches events and the page or the widget draws them.
//
//   state       {state, reason, message, callId}   idle | connecting | in-call | reconnecting | ended | error
//   transcript  {role, text, final}                one piece of a caption (role: user | agent)
//   speaking    {user, agent}                      who is heard now
//   stats       {rttMs, jitterBufferMs, ...}       every second during a call
//   turn        {voiceToVoiceMs}                   user's end of speech to the agent's first audio
//   devices     {devices, deviceId}                the microphones (labels once permission is given)
//   autoplay    {blocked}                          playback needs a tap (call unlockAudio() in one)
//   event       the raw data-channel event
//
// Only standard APIs: getUserMedia, RTCPeerConnection, getStats, Web Audio (analysis only: the agent
// plays from an <audio> element so the browser's echo canceller has it as its reference).

export const STATES = ["idle", "connecting", "in-call", "reconnecting", "ended", "error"];

const SPEECH_DB = -50; // a level above this is speech (dBFS)
const SILENCE_DB = -56; // ... and below this, silence again (hysteresis)
const SPEECH_START_MS = 120; // speech must last this long to count
const USER_HANGOVER_MS = 350; // this much silence ends the user's speech
const AGENT_HANGOVER_MS = 300;
const TICK_MS = 20;
const CONNECT_TIMEOUT_MS = 20000; // from the answer to a working connection
const HISTORY = 1500; // level samples kept for debugging (30 s)

const REASONS = {
  hangup: "You hung up.",
  peer_closed: "The connection was closed.",
  connection_failed: "The connection failed.",
  connection_lost: "The connection was lost and the call could not be resumed.",
  no_media: "No audio reached the server for too long.",
  gemini_error: "The voice model had an error.",
  server_shutdown: "The server is restarting. Call again in a moment.",
};

/** A default, human message for a state (both UIs use it, so they say the same things). */
export function describe(state, reason, extra) {
  switch (state) {
    case "idle": return "Ready";
    case "connecting": return "Connecting…";
    case "in-call": return extra === "resumed" ? "In call (reconnected)" : "In call";
    case "reconnecting": return "Connection lost, reconnecting…";
    case "ended": return `Call ended. ${REASONS[reason] || (reason ? `Reason: ${reason}.` : "")}`.trim();
    default: break;
  }
  switch (reason) {
    case "mic-denied": return "Microphone access was denied. Allow it in the browser's site settings, then call again.";
    case "no-mic": return "No microphone was found. Connect one, then call again.";
    case "mic-busy": return "The microphone could not be started: another app may be using it.";
    case "insecure": return "This page cannot use the microphone: it must be served over https.";
    case "unauthorized": return "This call needs a valid invitation: reload the page and try again.";
    case "connect-failed": return "The audio connection could not be set up: a firewall or VPN may be blocking it.";
    case "busy": return `The server is busy right now. Try again${extra ? ` in ${extra} s` : " soon"}.`;
    case "unreachable": return "Cannot reach the Parley server. Check your connection, then call again.";
    case "forbidden": return "This site is not allowed to use this Parley server.";
    case "refused": return `The server refused the call${extra ? `: ${extra}` : "."}`;
    default: return extra || "Something went wrong.";
  }
}

export class ParleyError extends Error {
  constructor(reason, detail = "") {
    super(describe("error", reason, detail));
    this.reason = reason;
    this.detail = detail;
  }
}

const dbfs = (buffer) => {
  let sum = 0;
  for (let i = 0; i < buffer.length; i += 1) sum += buffer[i] * buffer[i];
  const rms = Math.sqrt(sum / buffer.length);
  return rms > 1e-6 ? 20 * Math.log10(rms) : -120;
};

// The peer connection's state; from ICE alone where a browser has no connectionState.
const connectionState = (pc) => {
  if (pc.connectionState) return pc.connectionState;
  const ice = pc.iceConnectionState;
  return { completed: "connected", checking: "connecting" }[ice] || ice;
};

const median = (values) => {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

/** A level meter on a MediaStream (analysis only: never connected to the speakers). */
class Meter {
  constructor(context, stream) {
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024; // ~21 ms at 48 kHz, about one tick
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  level() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    return dbfs(this.buffer);
  }

  disconnect() {
    try { this.source.disconnect(); } catch { /* already */ }
  }
}

export class ParleyClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.server] the server's base URL ("" or unset: this page's origin)
   * @param {HTMLAudioElement} options.audio where the agent is heard
   * @param {number} [options.reconnectGraceMs] how long to keep trying to rejoin the call
   * @param {number} [options.disconnectedMs] how long "disconnected" may last before a rejoin
   * @param {string|function(): (string|Promise<string>)} [options.token] a join token for servers that
   *   require one (PARLEY_JOIN_SECRET), or a function that fetches one; sent as `Authorization: Bearer`
   */
  constructor({ server = "", audio, reconnectGraceMs = 20000, disconnectedMs = 4000, token = null } = {}) {
    super();
    this.token = token;
    this.base = (server || globalThis.location?.origin || "").replace(/\/+$/, "");
    this.audio = audio;
    this.reconnectGraceMs = reconnectGraceMs;
    this.disconnectedMs = disconnectedMs;
    this.state = "idle";
    this.reason = null;
    this.config = null;
    this.callId = null;
    this.pc = null;
    this.channel = null;
    this.mic = null;
    this.muted = false;
    this.deviceId = "";
    this.context = null;
    this.localMeter = null;
    this.remoteMeter = null;
    this.turns = [];
    this.stats = {};
    this.speaking = { user: false, agent: false };
    this.debug = { local: [], remote: [], localDb: -120, remoteDb: -120, agentLoudMs: 0, events: [] };
    this._vad = null;
    this._timers = [];
    this._disconnectTimer = null;
    this._reconnecting = null;
    this._onOnline = () => this._maybeReconnectNow();
    this._onPageHide = () => this._hangUpOnUnload();
  }

  // --- public --------------------------------------------------------------------------------

  /** GET /v1/config: {iceServers, emulator, model}. Throws ParleyError (unreachable, forbidden...). */
  async loadConfig() {
    const response = await this._fetch("/v1/config", { headers: { Accept: "application/json" } });
    if (!response.ok) throw await this._refusal(response);
    this.config = await response.json();
    return this.config;
  }

  /** Start a call. Call it from a click or key handler: it unlocks audio playback first. */
  async start({ deviceId } = {}) {
    if (this.state === "connecting" || this.state === "in-call" || this.state === "reconnecting") return;
    this._teardown(); // whatever a previous call left
    this.unlockAudio(); // before any await: still inside the user's gesture
    this._reset();
    if (deviceId !== undefined) this.deviceId = deviceId;
    this._setState("connecting");
    try {
      if (!this.config) await this.loadConfig();
      if (this.state !== "connecting") return; // hung up meanwhile
      const mic = await this._openMic(this.deviceId);
      if (this.state !== "connecting") { mic.getTracks().forEach((track) => track.stop()); return; }
      this.mic = mic;
      this._startMeters();
      await this._listDevices();
      const { id } = await this._connect(null);
      this.callId = id;
      this._connectTimer = setTimeout(() => {
        if (this.state === "connecting" && this.callId === id) this._connectFailed();
      }, CONNECT_TIMEOUT_MS);
      globalThis.addEventListener?.("online", this._onOnline);
      globalThis.addEventListener?.("pagehide", this._onPageHide);
    } catch (error) {
      this._teardown();
      if (this.state === "ended") return; // hung up while connecting
      const reason = error instanceof ParleyError ? error.reason : "refused";
      const detail = error instanceof ParleyError ? error.detail : String(error?.message || error);
      this._setState("error", reason, describe("error", reason, detail));
    }
  }

  /** Hang up: the server is told (DELETE), then everything local is released. */
  async hangUp() {
    const callId = this.callId;
    const active = this.state !== "ended" && this.state !== "error" && this.state !== "idle";
    this.mic?.getAudioTracks().forEach((track) => { track.enabled = false; }); // silent at once
    if (active) this._setState("ended", "hangup");
    if (callId) {
      // The DELETE goes before the peer connection closes, so the server records a hang-up.
      const deleted = this._fetch(`/v1/calls/${callId}`, { method: "DELETE" }).catch(() => {});
      await Promise.race([deleted, new Promise((resolve) => setTimeout(resolve, 2000))]);
    }
    if (this.callId === callId) this._teardown();
  }

  setMuted(muted) {
    this.muted = Boolean(muted);
    this.mic?.getAudioTracks().forEach((track) => { track.enabled = !this.muted; });
  }

  /** Switch microphones, mid-call too (the sender's track is replaced: no renegotiation). */
  async setDevice(deviceId) {
    this.deviceId = deviceId || "";
    if (!this.mic) return;
    const fresh = await this._openMic(this.deviceId).catch((error) => {
      const reason = error instanceof ParleyError ? error.reason : "mic-busy";
      this._emit("error", { reason, message: describe("error", reason) });
      return null;
    });
    if (!fresh) return;
    const track = fresh.getAudioTracks()[0];
    track.enabled = !this.muted;
    const sender = this.pc?.getSenders().find((s) => s.track?.kind === "audio" || s.track === null);
    if (sender) await sender.replaceTrack(track);
    this.mic.getTracks().forEach((t) => t.stop());
    this.mic = fresh;
    this.localMeter?.disconnect();
    if (this.context) this.localMeter = new Meter(this.context, fresh);
    await this._listDevices();
  }

  /** Allow playback (mobile autoplay rules): call it inside a user gesture. */
  unlockAudio() {
    const AudioContextClass = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!this.context && AudioContextClass) this.context = new AudioContextClass();
    this.context?.resume?.().catch(() => {});
    if (this.audio) {
      this.audio.muted = false;
      // Play something now, in the gesture (silence until the agent's track arrives): the element
      // may then play without one, as Safari and mobile browsers require.
      if (!this.audio.srcObject && this.context?.createMediaStreamDestination) {
        this.audio.srcObject = this.context.createMediaStreamDestination().stream;
      }
      const playing = this.audio.play?.();
      if (playing) {
        playing.then(() => this._emit("autoplay", { blocked: false })).catch((error) => {
          // An element with no source yet rejects with NotSupportedError: that is no block.
          if (error?.name === "NotAllowedError") this._emit("autoplay", { blocked: true });
        });
      }
    }
  }

  static async microphones() {
    if (!navigator.mediaDevices?.enumerateDevices) return [];
    const devices = await navigator.mediaDevices.enumerateDevices();
    return devices.filter((d) => d.kind === "audioinput");
  }

  // --- set-up --------------------------------------------------------------------------------

  async _openMic(deviceId) {
    if (!navigator.mediaDevices?.getUserMedia) throw new ParleyError("insecure");
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    if (deviceId) audio.deviceId = { exact: deviceId };
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
      stream.getAudioTracks().forEach((track) => {
        track.enabled = !this.muted;
        track.addEventListener("ended", () => this._emit("error", { reason: "mic-busy", message: "The microphone stopped." }));
      });
      return stream;
    } catch (error) {
      if (error?.name === "NotAllowedError" || error?.name === "SecurityError") throw new ParleyError("mic-denied");
      if (error?.name === "NotFoundError" || error?.name === "OverconstrainedError") throw new ParleyError("no-mic");
      throw new ParleyError("mic-busy", error?.message);
    }
  }

  /** One peer connection and offer: POST /v1/calls (with `resume` when rejoining a call). */
  async _connect(resumeId) {
    const pc = new RTCPeerConnection({ iceServers: this.config?.iceServers || [] });
    const old = this.pc;
    this.pc = pc;
    this.mic.getAudioTracks().forEach((track) => pc.addTrack(track, this.mic));
    pc.addEventListener("track", (event) => {
      if (pc !== this.pc) return;
      const stream = event.streams[0] || new MediaStream([event.track]);
      this._playRemote(stream);
    });
    const channel = pc.createDataChannel("events");
    channel.addEventListener("message", (message) => { if (pc === this.pc) this._onEvent(message.data); });
    this.channel = channel;
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc));
    pc.addEventListener("iceconnectionstatechange", () => this._onConnectionState(pc));

    await pc.setLocalDescription(await pc.createOffer());
    await this._gathered(pc, 3000);
    const body = { sdp: pc.localDescription.sdp, type: "offer" };
    if (resumeId) body.resume = resumeId;
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    let response;
    try {
      const token = typeof this.token === "function" ? await this.token() : this.token;
      if (token) headers.Authorization = `Bearer ${token}`;
      // The resume goes in the query too: the server admits a rejoin without a (maybe expired) token.
      const path = resumeId ? `/v1/calls?resume=${encodeURIComponent(resumeId)}` : "/v1/calls";
      response = await this._fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (error) {
      if (pc === this.pc) this.pc = old;
      pc.close();
      throw error;
    }
    if (!response.ok) {
      if (pc === this.pc) this.pc = old;
      pc.close();
      throw await this._refusal(response);
    }
    const answer = await response.json();
    if (pc !== this.pc) {
      // Hung up while the offer was on its way: end the call the server has just made.
      pc.close();
      if (answer.id && answer.id !== resumeId) this._fetch(`/v1/calls/${answer.id}`, { method: "DELETE" }).catch(() => {});
      throw new ParleyError("refused", "superseded");
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    if (old && old !== pc) old.close(); // the server has moved the call over to this one
    this._startStats();
    return answer;
  }

  _gathered(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(done, timeoutMs); // send what there is: no trickle over HTTP
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
      pc.addEventListener("icecandidate", (event) => !event.candidate && done());
    });
  }

  _playRemote(stream) {
    if (this.audio) {
      this.audio.srcObject = stream;
      const playing = this.audio.play?.();
      playing?.then(() => this._emit("autoplay", { blocked: false })).catch((error) => {
        if (error?.name === "NotAllowedError") this._emit("autoplay", { blocked: true });
      });
    }
    this.remoteMeter?.disconnect();
    if (this.context) this.remoteMeter = new Meter(this.context, stream);
  }

  // --- connection state and reconnection -----------------------------------------------------

  _onConnectionState(pc) {
    if (pc !== this.pc || this._reconnecting) return;
    if (this.state === "ended" || this.state === "error" || this.state === "idle") return;
    const state = connectionState(pc);
    if (state === "connected") {
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = null;
      this._everConnected = true;
      if (this.state === "connecting" || this.state === "reconnecting") this._setState("in-call", null, this._resumed ? "resumed" : undefined);
      return;
    }
    if (state === "failed") {
      this._connectionLost();
    } else if (state === "disconnected" && !this._disconnectTimer) {
      // Often a blip that heals by itself; if it lasts, rejoin over a new connection.
      this._disconnectTimer = setTimeout(() => {
        this._disconnectTimer = null;
        if (pc === this.pc && connectionState(pc) !== "connected") this._connectionLost();
      }, this.disconnectedMs);
    }
  }

  _connectionLost() {
    // A call that never connected is not rejoined: the network likely blocks it.
    if (this._everConnected) this._reconnect();
    else this._connectFailed();
  }

  _connectFailed() {
    const callId = this.callId;
    this._teardown();
    if (callId) this._fetch(`/v1/calls/${callId}`, { method: "DELETE" }).catch(() => {});
    this._setState("error", "connect-failed", describe("error", "connect-failed"));
  }

  _maybeReconnectNow() {
    // Back online (often on another network): a connection still down is rejoined now.
    const state = this.pc && connectionState(this.pc);
    if (this.state === "in-call" && (state === "disconnected" || state === "failed")) this._reconnect();
  }

  /** Join the same call over a new peer connection, for up to reconnectGraceMs. */
  _reconnect() {
    if (this._reconnecting || !this.callId) return;
    clearTimeout(this._disconnectTimer);
    this._disconnectTimer = null;
    this._setState("reconnecting");
    const deadline = performance.now() + this.reconnectGraceMs;
    const previous = this.callId;
    this._reconnecting = (async () => {
      let wait = 500;
      while (this.state === "reconnecting" && performance.now() < deadline) {
        try {
          const answer = await this._connect(previous);
          if (this.state !== "reconnecting") return;
          this._resumed = true;
          if (answer.id && answer.id !== previous) {
            this._emit("event", { type: "resume_refused", previous, id: answer.id });
          }
          this.callId = answer.id || previous;
          const connected = await this._waitConnected(this.pc, Math.max(1000, deadline - performance.now()));
          if (connected) {
            this._reconnecting = null;
            this._setState("in-call", null, "resumed");
            return;
          }
        } catch (error) {
          // 4xx: the call is gone (404) or the server will not have us; retrying will not help.
          if (error instanceof ParleyError && error.status >= 400 && error.status < 500) break;
        }
        await new Promise((resolve) => setTimeout(resolve, wait));
        wait = Math.min(wait * 2, 4000);
      }
      this._reconnecting = null;
      if (this.state === "reconnecting") {
        this._teardown();
        this._setState("ended", "connection_lost");
      }
    })();
  }

  _waitConnected(pc, timeoutMs) {
    return new Promise((resolve) => {
      const check = () => {
            const state = connectionState(pc);
        if (state === "connected") finish(true);
        else if (state === "failed" || state === "closed") finish(false);
      };
      const finish = (ok) => {
        clearTimeout(timer);
        pc.removeEventListener("connectionstatechange", check);
        pc.removeEventListener("iceconnectionstatechange", check);
        resolve(ok);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      pc.addEventListener("connectionstatechange", check);
      pc.addEventListener("iceconnectionstatechange", check);
      check();
    });
  }

  // --- data channel events -------------------------------------------------------------------

  _onEvent(data) {
    let event;
    try { event = JSON.parse(data); } catch { return; }
    this.debug.events.push(event);
    if (this.debug.events.length > 200) this.debug.events.shift();
    this._emit("event", event);
    switch (event.type) {
      case "call":
        if (event.id) this.callId = event.id;
        break;
      case "transcript":
        this._emit("transcript", { role: event.role === "user" ? "user" : "agent", text: String(event.text || ""), final: Boolean(event.final) });
        break;
      case "ended": {
        if (this.state === "ended") break; // we hung up: hangUp() releases everything
        const callId = this.callId;
        this._teardown();
        this.callId = callId;
        this._setState("ended", event.reason || "unknown");
        break;
      }
      default:
        break;
    }
  }

  // --- levels, speaking, voice-to-voice ------------------------------------------------------

  _startMeters() {
    if (!this.context) return;
    this.localMeter = new Meter(this.context, this.mic);
    this._vad = { loudSince: null, lastLoud: 0, userEnd: null, agentLast: 0 };
    this._timers.push(setInterval(() => this._tick(), TICK_MS));
  }

  _tick() {
    const now = performance.now();
    const vad = this._vad;
    const local = this.localMeter && !this.muted ? this.localMeter.level() : -120;
    const remote = this.remoteMeter ? this.remoteMeter.level() : -120;
    this.debug.localDb = local;
    this.debug.remoteDb = remote;
    this.debug.local.push([Math.round(now), Math.round(local)]);
    this.debug.remote.push([Math.round(now), Math.round(remote)]);
    if (this.debug.local.length > HISTORY) this.debug.local.shift();
    if (this.debug.remote.length > HISTORY) this.debug.remote.shift();
    let { user, agent } = this.speaking;

    // The user: a start guard, hysteresis and a hangover; the end of speech is the last loud moment.
    if (local > SPEECH_DB) {
      vad.loudSince ??= now;
      vad.lastLoud = now;
      if (!user && now - vad.loudSince >= SPEECH_START_MS) { user = true; vad.userEnd = null; }
    } else if (!user) {
      vad.loudSince = null;
    }
    if (user && local < SILENCE_DB && now - vad.lastLoud >= USER_HANGOVER_MS) {
      user = false;
      vad.loudSince = null;
      vad.userEnd = vad.lastLoud;
    }

    // The agent, as heard: its first audio after the user's end of speech closes a turn.
    if (remote > SPEECH_DB) {
      this.debug.agentLoudMs += TICK_MS;
      if (!agent) {
        agent = true;
        if (vad.userEnd !== null && !user) {
          const ms = Math.round(now - vad.userEnd);
          vad.userEnd = null;
          this.turns.push(ms);
          this._emit("turn", { voiceToVoiceMs: ms });
          this._publishStats();
        }
      }
      vad.agentLast = now;
    } else if (agent && now - vad.agentLast >= AGENT_HANGOVER_MS) {
      agent = false;
    }

    if (user !== this.speaking.user || agent !== this.speaking.agent) {
      this.speaking = { user, agent };
      this._emit("speaking", { ...this.speaking });
    }
  }

  // --- getStats ------------------------------------------------------------------------------

  _startStats() {
    if (this._statsTimer) return;
    this._statsTimer = setInterval(() => this._collectStats().catch(() => {}), 1000);
    this._timers.push(this._statsTimer);
  }

  async _collectStats() {
    const pc = this.pc;
    if (!pc || pc.connectionState === "closed") return;
    const report = await pc.getStats();
    let pairId = null;
    let inbound = null;
    const pairs = [];
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") inbound = s;
      if (s.type === "candidate-pair") pairs.push(s);
    });
    const pair = (pairId && report.get(pairId))
      || pairs.find((p) => p.selected)
      || pairs.find((p) => p.nominated && p.state === "succeeded");
    const stats = {};
    if (pair && typeof pair.currentRoundTripTime === "number") stats.rttMs = Math.round(pair.currentRoundTripTime * 1000);
    if (inbound) {
      if (inbound.jitterBufferEmittedCount) {
        stats.jitterBufferMs = Math.round((inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000);
      }
      stats.packetsLost = inbound.packetsLost ?? 0;
      stats.packetsReceived = inbound.packetsReceived ?? 0;
      stats.concealedSamples = inbound.concealedSamples ?? 0;
      if (inbound.totalSamplesReceived) {
        stats.concealedPct = Math.round((1000 * (inbound.concealedSamples || 0)) / inbound.totalSamplesReceived) / 10;
      }
      if (typeof inbound.jitter === "number") stats.jitterMs = Math.round(inbound.jitter * 1000);
    }
    this.stats = { ...this.stats, ...stats };
    this._publishStats();
  }

  _publishStats() {
    const last = this.turns.length ? this.turns[this.turns.length - 1] : null;
    this.stats = { ...this.stats, voiceToVoiceMs: last, voiceToVoiceMedianMs: median(this.turns), turns: this.turns.length };
    this._emit("stats", { ...this.stats });
  }

  // --- helpers -------------------------------------------------------------------------------

  async _listDevices() {
    const devices = await ParleyClient.microphones().catch(() => []);
    const track = this.mic?.getAudioTracks()[0];
    const current = track?.getSettings?.().deviceId || this.deviceId;
    this._emit("devices", { devices, deviceId: current });
  }

  async _fetch(path, init) {
    try {
      return await fetch(`${this.base}${path}`, { mode: "cors", credentials: "omit", ...init });
    } catch {
      // A network error, or a cross-origin request the server would not answer.
      throw new ParleyError("unreachable");
    }
  }

  async _refusal(response) {
    const body = await response.json().catch(() => ({}));
    const message = typeof body.error === "string" ? body.error : "";
    let error;
    if (response.status === 503) error = new ParleyError("busy", response.headers.get("Retry-After") || "");
    else if (response.status === 401) error = new ParleyError("unauthorized", message);
    else if (response.status === 403) {
      error = new ParleyError("forbidden", message);
      console.warn(`Parley: ${message || "this origin is not allowed"}`);
    }
    else error = new ParleyError("refused", message || `HTTP ${response.status}`);
    error.status = response.status;
    return error;
  }

  _hangUpOnUnload() {
    // Leaving the page: tell the server now, the request outlives the page.
    if (this.callId && (this.state === "in-call" || this.state === "reconnecting" || this.state === "connecting")) {
      fetch(`${this.base}/v1/calls/${this.callId}`, { method: "DELETE", keepalive: true, mode: "cors", credentials: "omit" }).catch(() => {});
    }
  }

  _reset() {
    this.turns = [];
    this.stats = {};
    this.callId = null;
    this._resumed = false;
    this._everConnected = false;
    this.muted = false;
    this.debug = { local: [], remote: [], localDb: -120, remoteDb: -120, agentLoudMs: 0, events: [] };
  }

  _teardown() {
    this._timers.forEach((timer) => clearInterval(timer));
    this._timers = [];
    this._statsTimer = null;
    clearTimeout(this._disconnectTimer);
    this._disconnectTimer = null;
    clearTimeout(this._connectTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    const pc = this.pc;
    this.pc = null;
    this.channel = null;
    pc?.close();
    this.mic?.getTracks().forEach((track) => track.stop());
    this.mic = null;
    this.localMeter?.disconnect();
    this.remoteMeter?.disconnect();
    this.localMeter = null;
    this.remoteMeter = null;
    if (this.audio) this.audio.srcObject = null;
    if (this.speaking.user || this.speaking.agent) {
      this.speaking = { user: false, agent: false };
      this._emit("speaking", { ...this.speaking });
    }
  }

  _setState(state, reason = null, extra = undefined) {
    this.state = state;
    this.reason = reason;
    const message = typeof extra === "string" && state === "error" ? extra : describe(state, reason, extra);
    this._emit("state", { state, reason, message, callId: this.callId });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
