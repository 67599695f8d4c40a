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
//   grounding   {sources: [{title, uri}], queries}  the web sources of an answer grounded with Google Search
//   mic         {state, label}                     interrupted (the system ended it: resumeMic()),
//                                                  live (resumed), switched (a new default microphone)
//   visibility  {hidden}                           the page went to the background (the call goes on)
//   video       {source, state, reason, message, agent, available, ...}   camera or screen share
//                                                  (client/video.js; available false: the agent takes none)
//   event       the raw data-channel event
//
// Only standard APIs: getUserMedia, RTCPeerConnection, getStats, Web Audio (analysis only: the agent
// plays from an <audio> element so the browser's echo canceller has it as its reference).
// The parts live in client/: connection.js (the peer connection, call state, rejoining; the class this
// one extends), events.js (states, messages, errors), signaling.js (HTTP and connection state),
// media.js (microphone, devices, playback), stats.js (speaking, voice-to-voice, getStats), video.js
// (camera and screen share).
import { CallConnection } from "./client/connection.js";
import { LIVE_STATES, ParleyError, describe, groundingDetail, parseEvent, transcriptDetail } from "./client/events.js";
import { PageLifecycle } from "./client/lifecycle.js";
import { microphones, openMic, play, unlock } from "./client/media.js";
import { Levels, freshDebug, median, readLocalShare, readStats } from "./client/stats.js";
import { Video } from "./client/video.js";

export { STATES, ParleyError, describe } from "./client/events.js";

const CONNECT_TIMEOUT_MS = 20000; // from the answer to a working connection

export class ParleyClient extends CallConnection {
  /**
   * @param {object} options
   * @param {string} [options.server] the server's base URL ("" or unset: this page's origin)
   * @param {HTMLAudioElement} options.audio where the agent is heard
   * @param {number} [options.reconnectGraceMs] how long to keep trying to rejoin the call
   * @param {number} [options.disconnectedMs] how long "disconnected" may last before a rejoin
   * @param {string|function(): (string|Promise<string>)} [options.token] a join token for servers that
   *   require one (PARLEY_JOIN_SECRET), or a function that fetches one; sent as `Authorization: Bearer`
   * @param {string|function(): string} [options.agent] the agent profile to call (unset: the server's default)
   * @param {object|function(): object} [options.variables] what the agent's instruction is filled with
   *   ({customer_name: "Ada"}); a join token's variables override them
   * @param {boolean} [options.video] offer a video m-line, so setVideo() can send a camera or a screen
   * @param {HTMLVideoElement} [options.selfView] where what is sent is shown
   */
  constructor({
    server = "", audio, reconnectGraceMs = 20000, disconnectedMs = 4000, token = null, video = false, selfView = null,
    agent = null, variables = null,
  } = {}) {
    super({ server, token, reconnectGraceMs, disconnectedMs, agent, variables });
    this.audio = audio;
    this.video = video
      ? new Video({ onChange: (detail) => this._emit("video", detail), server: () => this.config?.video, selfView })
      : null;
    this.mic = null;
    this.muted = false;
    this.deviceId = "";
    this.context = null;
    this.levels = null;
    this.turns = [];
    this.stats = {};
    this._statsPc = null; // the connection the last getStats() reading was of, and that reading
    this._statsPrevious = {};
    this.speaking = { user: false, agent: false };
    this.debug = freshDebug();
    this._timers = [];
    this._onAutoplay = (blocked) => this._emit("autoplay", { blocked });
    this.lifecycle = new PageLifecycle(this);
    this.micInterrupted = false;
  }

  // --- public --------------------------------------------------------------------------------

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
      this._watchPage();
      this.lifecycle.start();
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
    await this._useMic(fresh);
  }

  /** After the system ended the microphone (mic event "interrupted"): open it again, same call. */
  async resumeMic() {
    await this.setDevice(this.deviceId);
    if (this.mic?.getAudioTracks()[0]?.readyState === "live") {
      this.micInterrupted = false;
      this._emit("mic", { state: "live" });
    }
  }

  /**
   * Send the camera ("camera"), the screen ("screen") or no video (null) during a call: the same
   * m-line's track is replaced, no new offer. Call it from a click: the browser asks for permission.
   */
  async setVideo(source) {
    if (!this.video) throw new ParleyError("refused", "this client was made without video");
    await this.video.set(LIVE_STATES.includes(this.state) ? source : null);
  }

  /** GET /v1/config; an agent that takes no video (video.enabled false) gets audio-only offers. */
  async loadConfig() {
    const config = await super.loadConfig();
    this.video?.setAvailable(config?.video?.enabled !== false);
    return config;
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
    let stream = null;
    const opened = openMic(deviceId, this.muted, () => {
      if (stream === this.mic) this._micInterrupted(); // not a track already replaced
    });
    return opened.then((s) => { stream = s; return s; });
  }

  _micInterrupted() {
    if (this.micInterrupted || !LIVE_STATES.includes(this.state)) return;
    this.micInterrupted = true;
    this._emit("mic", { state: "interrupted" });
  }

  /** Send `fresh` instead of the current microphone (no renegotiation: the sender's track is replaced). */
  async _useMic(fresh) {
    const track = fresh.getAudioTracks()[0];
    track.enabled = !this.muted;
    await this._sender("audio")?.replaceTrack(track);
    this.mic?.getTracks().forEach((t) => t.stop());
    this.mic = fresh;
    this.levels?.setLocal(fresh);
    await this._listDevices();
  }

  _addMedia(pc) {
    this.mic.getAudioTracks().forEach((track) => pc.addTrack(track, this.mic));
    this.video?.offer(pc);
  }

  async _connected() {
    this._startStats();
    const sender = this._sender("video");
    if (this.video && sender) await this.video.use(sender);
  }

  _playRemote(stream) {
    if (this.audio) {
      this.audio.srcObject = stream;
      play(this.audio, this._onAutoplay);
    }
    this.levels?.setRemote(stream);
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
      case "grounding":
        this._emit("grounding", groundingDetail(event));
        break;
      case "video":
        this.video?.agentState(event.state);
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
        // for the call's record: voice-to-voice as the caller heard it
        if (this.channel?.readyState === "open") this.channel.send(JSON.stringify({ type: "voice_to_voice", ms }));
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
    if (this._statsPc !== pc) { this._statsPc = pc; this._statsPrevious = {}; } // a rejoin's new connection
    const track = this.mic?.getAudioTracks()[0];
    this.stats = { ...this.stats, ...(await readStats(pc, this._statsPrevious)), ...readLocalShare(track) };
    this._publishStats();
    if (pc === this.pc) this._watchMedia(this.stats.packetsReceived);
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
    this.lifecycle.stop();
    this.micInterrupted = false;
    this._timers.forEach((timer) => clearInterval(timer));
    this._timers = [];
    this._statsTimer = null;
    this._closeConnection();
    this.mic?.getTracks().forEach((track) => track.stop());
    this.mic = null;
    this.video?.close();
    this.levels?.stop();
    this.levels = null;
    if (this.audio) this.audio.srcObject = null;
    if (this.speaking.user || this.speaking.agent) {
      this.speaking = { user: false, agent: false };
      this._emit("speaking", { ...this.speaking });
    }
  }

}
