// One call's connection to a Parley server: the peer connection and its offer (signaling.js), the
// `events` data channel, the call's state, and rejoining the same call over a new peer connection
// when the network fails. ParleyClient (parley-client.js) adds the media, levels and stats on top,
// through three hooks: _addMedia(pc) before the offer, _connected(pc) after the answer, and
// _playRemote(stream) / _onEvent(data) for what arrives.
import { LIVE_STATES, ParleyError, describe } from "./events.js";
import { Signaling, connectionState, gathered, retry, waitConnected } from "./signaling.js";

export class CallConnection extends EventTarget {
  constructor({
    server = "", token = null, reconnectGraceMs = 20000, disconnectedMs = 4000, silentMs = 2500,
    agent = null, variables = null,
  } = {}) {
    super();
    this.base = (server || globalThis.location?.origin || "").replace(/\/+$/, "");
    this.signaling = new Signaling(this.base, token, { agent, variables });
    this.reconnectGraceMs = reconnectGraceMs;
    this.disconnectedMs = disconnectedMs;
    // The server sends 50 packets a second, silence included: none for this long means the path is dead.
    this.silentMs = silentMs;
    this._received = { pc: null, count: -1, since: 0 };
    this.state = "idle";
    this.reason = null;
    this.config = null;
    this.callId = null;
    this.pc = null;
    this.channel = null;
    this._disconnectTimer = null;
    this._reconnecting = null;
    this._onOnline = () => this._maybeReconnectNow();
    this._onPageHide = () => this._hangUpOnUnload();
  }

  get token() { return this.signaling.token; }

  set token(token) { this.signaling.token = token; }

  /** GET /v1/config: {iceServers, emulator, model, video}. Throws ParleyError (unreachable, forbidden...). */
  async loadConfig() {
    this.config = await this.signaling.config();
    return this.config;
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
    this._addMedia(pc);
    pc.addEventListener("track", (event) => {
      if (pc !== this.pc || event.track.kind !== "audio") return;
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
    await this._connected(pc);
    return answer;
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

  /** Called with the agent's audio packet count (getStats, every second or so). Firefox's ICE takes
   *  ~10 s to call a dead network "disconnected", and the server gives up on a caller it has not heard
   *  from for PARLEY_NO_MEDIA_TIMEOUT (10 s): by then a rejoin comes too late. A count that stops
   *  growing tells within silentMs, in every browser. */
  _watchMedia(packetsReceived) {
    const pc = this.pc;
    if (!pc || typeof packetsReceived !== "number" || this._reconnecting || this.state !== "in-call") return;
    const now = performance.now();
    const last = this._received;
    if (last.pc !== pc || packetsReceived !== last.count) {
      this._received = { pc, count: packetsReceived, since: now };
    } else if (now - last.since >= this.silentMs) {
      this._received = { pc: null, count: -1, since: 0 };
      this._connectionLost();
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

  _hangUpOnUnload() {
    // Leaving the page: tell the server now, the request outlives the page.
    if (this.callId && LIVE_STATES.includes(this.state)) this.signaling.hangUp(this.callId, { keepalive: true });
  }

  /** A call is set up: rejoin at once when the browser is back online, hang up when the page goes. */
  _watchPage() {
    globalThis.addEventListener?.("online", this._onOnline);
    globalThis.addEventListener?.("pagehide", this._onPageHide);
  }

  /** Close the peer connection and stop watching (the subclass's _teardown calls this). */
  _closeConnection() {
    clearTimeout(this._disconnectTimer);
    this._disconnectTimer = null;
    clearTimeout(this._connectTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    const pc = this.pc;
    this.pc = null;
    this.channel = null;
    pc?.close();
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
