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
// The parts live in client/: events.js (states, messages, errors), signaling.js (HTTP and connection
// state), media.js (microphone, devices, playback), stats.js (speaking, voice-to-voice, getStats).
import { LIVE_STATES, ParleyError, describe, parseEvent, transcriptDetail } from "./client/events.js";
import { microphones, openMic, play, unlock } from "./client/media.js";
import { Signaling, connectionState, gathered, retry, waitConnected } from "./client/signaling.js";
import { Levels, freshDebug, median, readStats } from "./client/stats.js";

export { STATES, ParleyError, describe } from "./client/events.js";

const CONNECT_TIMEOUT_MS = 20000; // from the answer to a working connection

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
    this.base = (server || globalThis.location?.origin || "").replace(/\/+$/, "");
    this.signaling = new Signaling(this.base, token);
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
    this.levels = null;
    this.turns = [];
    this.stats = {};
    this.speaking = { user: false, agent: false };
    this.debug = freshDebug();
    this._timers = [];
    this._disconnectTimer = null;
    this._reconnecting = null;
    this._onOnline = () => this._maybeReconnectNow();
    this._onPageHide = () => this._hangUpOnUnload();
    this._onAutoplay = (blocked) => this._emit("autoplay", { blocked });
  }

  get token() { return this.signaling.token; }

  set token(token) { this.signaling.token = token; }

  // --- public --------------------------------------------------------------------------------

  /** GET /v1/config: {iceServers, emulator, model}. Throws ParleyError (unreachable, forbidden...). */
  async loadConfig() {
    this.config = await this.signaling.config();
    return this.config;
  }

  /** Start a call. Call it from a click or key handler: it unlocks audio playback first. */
  async start({ deviceId } = {}) {
    if (LIVE_STATES.includes(this.state)) return;
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
      const deleted = this.signaling.hangUp(callId);
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
    await this._sender("audio")?.replaceTrack(track);
    this.mic.getTracks().forEach((t) => t.stop());
    this.mic = fresh;
    this.levels?.setLocal(fresh);
    await this._listDevices();
  }

  /** Allow playback (mobile autoplay rules): call it inside a user gesture. */
  unlockAudio() {
    this.context = unlock(this.context, this.audio, this._onAutoplay);
  }

  static microphones() {
    return microphones();
  }

  // --- set-up --------------------------------------------------------------------------------

  _openMic(deviceId) {
    return openMic(deviceId, this.muted, () => {
      this._emit("error", { reason: "mic-busy", message: "The microphone stopped." });
    });
  }

  /** This call's sender of one kind (its track may be null: the receiver's kind says which). */
  _sender(kind) {
    return this.pc?.getTransceivers().find((t) => t.receiver.track?.kind === kind)?.sender;
  }

  /** One peer connection and offer: POST /v1/calls (with `resume` when rejoining a call). */
  async _connect(resumeId) {
    const pc = new RTCPeerConnection({ iceServers: this.config?.iceServers || [] });
    const old = this.pc;
    this.pc = pc;
    this.mic.getAudioTracks().forEach((track) => pc.addTrack(track, this.mic));
    pc.addEventListener("track", (event) => {
      if (pc !== this.pc) return;
      this._playRemote(event.streams[0] || new MediaStream([event.track]));
    });
    const channel = pc.createDataChannel("events");
    channel.addEventListener("message", (message) => { if (pc === this.pc) this._onEvent(message.data); });
    this.channel = channel;
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc));
    pc.addEventListener("iceconnectionstatechange", () => this._onConnectionState(pc));

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    let answer;
    try {
      answer = await this.signaling.offer(pc.localDescription.sdp, resumeId);
    } catch (error) {
      if (pc === this.pc) this.pc = old;
      pc.close();
      throw error;
    }
    if (pc !== this.pc) {
      // Hung up while the offer was on its way: end the call the server has just made.
      pc.close();
      if (answer.id && answer.id !== resumeId) this.signaling.hangUp(answer.id);
      throw new ParleyError("refused", "superseded");
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    if (old && old !== pc) old.close(); // the server has moved the call over to this one
    this._startStats();
    return answer;
  }

  _playRemote(stream) {
    if (this.audio) {
      this.audio.srcObject = stream;
      play(this.audio, this._onAutoplay);
    }
    this.levels?.setRemote(stream);
  }

  // --- connection state and reconnection -----------------------------------------------------

  _onConnectionState(pc) {
    if (pc !== this.pc || this._reconnecting) return;
    if (!LIVE_STATES.includes(this.state)) return;
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
    if (callId) this.signaling.hangUp(callId);
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
      const rejoined = await retry(deadline, () => this.state === "reconnecting", async () => {
        const answer = await this._connect(previous);
        if (this.state !== "reconnecting") return true;
        this._resumed = true;
        if (answer.id && answer.id !== previous) this._emit("event", { type: "resume_refused", previous, id: answer.id });
        this.callId = answer.id || previous;
        return waitConnected(this.pc, Math.max(1000, deadline - performance.now()));
      });
      this._reconnecting = null;
      if (this.state !== "reconnecting") return;
      if (rejoined) {
        this._setState("in-call", null, "resumed");
      } else {
        this._teardown();
        this._setState("ended", "connection_lost");
      }
    })();
  }

  // --- data channel events -------------------------------------------------------------------

  _onEvent(data) {
    const event = parseEvent(data);
    if (!event) return;
    this.debug.events.push(event);
    if (this.debug.events.length > 200) this.debug.events.shift();
    this._emit("event", event);
    switch (event.type) {
      case "call":
        if (event.id) this.callId = event.id;
        break;
      case "transcript":
        this._emit("transcript", transcriptDetail(event));
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

  // --- levels, speaking, voice-to-voice, getStats ----------------------------------------------

  _startMeters() {
    if (!this.context) return;
    this.levels = new Levels(this.context, this.debug, {
      muted: () => this.muted,
      onSpeaking: (speaking) => { this.speaking = speaking; this._emit("speaking", { ...speaking }); },
      onTurn: (ms) => {
        this.turns.push(ms);
        this._emit("turn", { voiceToVoiceMs: ms });
        this._publishStats();
      },
    });
    this.levels.setLocal(this.mic);
  }

  _startStats() {
    if (this._statsTimer) return;
    this._statsTimer = setInterval(() => this._collectStats().catch(() => {}), 1000);
    this._timers.push(this._statsTimer);
  }

  async _collectStats() {
    const pc = this.pc;
    if (!pc || pc.connectionState === "closed") return;
    this.stats = { ...this.stats, ...(await readStats(pc)) };
    this._publishStats();
  }

  _publishStats() {
    const last = this.turns.length ? this.turns[this.turns.length - 1] : null;
    this.stats = { ...this.stats, voiceToVoiceMs: last, voiceToVoiceMedianMs: median(this.turns), turns: this.turns.length };
    this._emit("stats", { ...this.stats });
  }

  // --- helpers -------------------------------------------------------------------------------

  async _listDevices() {
    const devices = await microphones().catch(() => []);
    const track = this.mic?.getAudioTracks()[0];
    const current = track?.getSettings?.().deviceId || this.deviceId;
    this._emit("devices", { devices, deviceId: current });
  }

  _hangUpOnUnload() {
    // Leaving the page: tell the server now, the request outlives the page.
    if (this.callId && LIVE_STATES.includes(this.state)) this.signaling.hangUp(this.callId, { keepalive: true });
  }

  _reset() {
    this.turns = [];
    this.stats = {};
    this.callId = null;
    this._resumed = false;
    this._everConnected = false;
    this.muted = false;
    this.debug = freshDebug();
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
    this.levels?.stop();
    this.levels = null;
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
