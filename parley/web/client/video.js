// Camera and screen share, over the call's one video m-line.
//
// The offer carries a send-only video transceiver from the start (the server cannot renegotiate: a
// call is one offer), and turning the camera or the share on or off, or switching between them, is a
// replaceTrack on its sender. Off means the track is stopped and the sender has none: no black frames,
// and the camera light goes off. The sender is told to send what the agent keeps and no more
// (setParameters): a few frames per second, scaled to the server's longest side, a bitrate cap.
//
// An agent that takes no video (its profile's `video = false`: /v1/config's video.enabled) gets an offer
// without a video m-line, so the browser never asks for a camera, and the page hides its toggles.
//
// The `video` event's detail:
//   {source, state, reason, message, agent, available, width, height, fps}
//   source    camera | screen | null
//   state     off | starting | on
//   reason    (when off) camera-denied | no-camera | camera-busy | share-denied | share-stopped |
//             camera-stopped | unsupported | no-video | agent-no-video | null (turned off, or never on)
//   agent     the server's last `video` data-channel state: active | paused | muted | ended | null
//   available false when the agent takes no video: show no Camera or Share screen toggle

export const VIDEO_MODES = ["none", "camera", "screen", "both"];

// Sent frames per sampled frame: the server samples PARLEY_VIDEO_FPS and sends a frame only if it is
// younger than one interval, so twice the rate keeps the newest frame fresh through jitter.
const SEND_PER_SAMPLE = 2;
const MIN_SEND_FPS = 2;
const MAX_SEND_FPS = 15;
// Bits per second: a camera at 768x432 and 2 fps needs little; screen text needs sharp key frames.
const MAX_BITRATE = { camera: 300_000, screen: 600_000 };

const MESSAGES = {
  "camera-denied": "Camera access was denied. Allow it in the browser's site settings, then turn the camera on again.",
  "no-camera": "No camera was found.",
  "camera-busy": "The camera could not be started: another app may be using it.",
  "camera-stopped": "The camera stopped.",
  "share-denied": "Screen sharing was not allowed.",
  "share-stopped": "Screen sharing stopped.",
  unsupported: "This browser cannot share its screen.",
  "no-video": "This call has no video.",
  "agent-no-video": "This agent does not take video: the call is audio only.",
};

export function describeVideo({ source, state, reason, agent }) {
  if (state === "starting") return source === "screen" ? "Choosing what to share…" : "Starting the camera…";
  if (state === "on") {
    const what = source === "screen" ? "Sharing your screen" : "Camera on";
    return agent === "active" ? `${what}: the agent sees it.` : `${what}.`;
  }
  return MESSAGES[reason] || "Video off.";
}

/** Whether this browser can share a screen (phones cannot). */
export const canShareScreen = () => Boolean(navigator.mediaDevices?.getDisplayMedia);

/** The sender's limits for one track: frame rate, resolution scale and bitrate. */
export function sendLimits(source, settings, server = {}) {
  const fps = Math.min(MAX_SEND_FPS, Math.max(MIN_SEND_FPS, SEND_PER_SAMPLE * (server.fps || 1)));
  const side = Math.max(settings.width || 0, settings.height || 0);
  const maxSide = server.maxSide || 768;
  return {
    maxFramerate: fps,
    scaleResolutionDownBy: side > maxSide ? side / maxSide : 1,
    maxBitrate: MAX_BITRATE[source],
  };
}

async function openSource(source, server) {
  const media = navigator.mediaDevices;
  const fps = Math.max(MIN_SEND_FPS, SEND_PER_SAMPLE * (server?.fps || 1));
  if (source === "screen") {
    if (!media?.getDisplayMedia) throw Object.assign(new Error(), { reason: "unsupported" });
    try {
      // Capture few frames: the encoder would drop the rest anyway.
      return await media.getDisplayMedia({ video: { frameRate: { ideal: fps, max: Math.max(fps, 5) } }, audio: false });
    } catch {
      throw Object.assign(new Error(), { reason: "share-denied" });
    }
  }
  if (!media?.getUserMedia) throw Object.assign(new Error(), { reason: "no-camera" });
  try {
    const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: Math.max(fps, 5) } };
    return await media.getUserMedia({ video, audio: false });
  } catch (error) {
    const name = error?.name;
    const reason = name === "NotAllowedError" || name === "SecurityError" ? "camera-denied"
      : name === "NotFoundError" || name === "OverconstrainedError" ? "no-camera" : "camera-busy";
    throw Object.assign(new Error(), { reason });
  }
}

/** The call's video: what is sent (camera, screen or nothing), the self-view, the sender's limits. */
export class Video {
  /**
   * @param {object} options
   * @param {function(object): void} options.onChange called with the `video` event's detail
   * @param {function(): object} options.server the server's video settings ({fps, maxSide} of /v1/config)
   * @param {HTMLVideoElement} [options.selfView] shows what is sent (muted, mirrored by CSS if wanted)
   */
  constructor({ onChange, server, selfView = null }) {
    this.onChange = onChange;
    this.server = server;
    this.selfView = selfView;
    this.source = null;
    this.stream = null;
    this.sender = null;
    this.agent = null;
    this.limits = null;
    this._starting = false; // a set() is waiting for the browser (a permission prompt, a picker)
    this._wanted = 0; // bumps on every set(): a slow permission prompt must not undo a later choice
    this.available = true; // the agent takes video (until /v1/config says otherwise)
  }

  get track() { return this.stream?.getVideoTracks()[0] || null; }

  /** /v1/config says whether the agent takes video; one that does not gets no video m-line at all. */
  setAvailable(available) {
    if (available === this.available) return;
    this.available = available;
    if (!available && (this.source || this._starting)) this._wanted += 1;
    this._stop(available ? null : "agent-no-video");
    if (available) this._report({ source: null, state: "off" });
  }

  /** Add the send-only video transceiver to an offer (with the current track, if any), if the agent takes video. */
  offer(pc) {
    if (this.available) pc.addTransceiver(this.track || "video", { direction: "sendonly" });
  }

  /** The answer is in: this sender is the call's now (a rejoin makes a new one). */
  async use(sender) {
    this.sender = sender;
    try {
      if (sender.track !== this.track) await sender.replaceTrack(this.track);
      await this._tune();
    } catch (error) {
      console.warn(`Parley: video could not be moved to the new connection: ${error?.message || error}`);
    }
  }

  /** Send the camera, the screen, or nothing (null). Resolves when done; failures end in state "off". */
  async set(source) {
    const wanted = ++this._wanted;
    if (!source) {
      this._stop(null);
      return;
    }
    if (!this.sender) {
      this._report({ source: null, state: "off", reason: this.available ? "no-video" : "agent-no-video" });
      return;
    }
    this._starting = true;
    this._report({ source, state: "starting" });
    let stream;
    try {
      stream = await openSource(source, this.server());
    } catch (error) {
      if (wanted === this._wanted) this._stop(error.reason || "camera-busy");
      return;
    }
    if (wanted !== this._wanted || !this.sender) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    const track = stream.getVideoTracks()[0];
    // The browser's own "Stop sharing" bar, or an unplugged camera, ends the track.
    track.addEventListener("ended", () => {
      if (this.track === track) this._stop(source === "screen" ? "share-stopped" : "camera-stopped");
    });
    if (source === "screen" && "contentHint" in track) track.contentHint = "text";
    const old = this.stream;
    this.stream = stream;
    this.source = source;
    await this.sender.replaceTrack(track);
    old?.getTracks().forEach((t) => t.stop());
    if (this.selfView) this.selfView.srcObject = stream;
    await this._tune();
    this._starting = false;
    this._report({ source, state: "on" });
  }

  /** The server's `video` data-channel event. */
  agentState(state) {
    this.agent = state || null;
    this._report({ source: this.source, state: this.source ? "on" : "off" });
  }

  /** The call is over: stop everything, forget the sender. */
  close() {
    this._wanted += 1;
    this.sender = null;
    this.agent = null;
    if (this.source || this._starting) this._stop(null);
  }

  _stop(reason) {
    const wasOn = this.source !== null || this._starting;
    this._starting = false;
    this.stream?.getTracks().forEach((t) => t.stop()); // the camera light goes off
    this.stream = null;
    this.source = null;
    this.limits = null;
    if (this.selfView) this.selfView.srcObject = null;
    this.sender?.replaceTrack(null).catch(() => {});
    if (wasOn || reason) this._report({ source: null, state: "off", reason });
  }

  async _tune() {
    const track = this.track;
    if (!this.sender || !track) return;
    const limits = sendLimits(this.source, track.getSettings?.() || {}, this.server() || {});
    const sender = this.sender;
    const apply = (preference) => {
      const params = sender.getParameters(); // fresh each time: Chrome wants its transaction id
      if (!params.encodings?.length) params.encodings = [{}];
      Object.assign(params.encodings[0], limits);
      if (preference) params.degradationPreference = preference;
      return sender.setParameters(params);
    };
    try {
      // The agent wants detail, not motion (screen text must stay sharp): when the bitrate or the CPU
      // is short, send fewer frames rather than fewer pixels ("balanced" started a camera at 576 px).
      // Not every browser takes degradationPreference here: the limits matter more.
      await apply("maintain-resolution").catch(() => apply(null));
      this.limits = limits;
    } catch (error) {
      console.warn(`Parley: the video sender's limits could not be set: ${error?.message || error}`);
    }
  }

  _report({ source, state, reason = null }) {
    const settings = this.track?.getSettings?.() || {};
    const scale = this.limits?.scaleResolutionDownBy || 1;
    const detail = { source, state, reason, agent: this.agent, available: this.available };
    if (state === "on" && settings.width) {
      detail.width = Math.round(settings.width / scale);
      detail.height = Math.round(settings.height / scale);
      detail.fps = this.limits?.maxFramerate;
    }
    detail.message = describeVideo(detail);
    this.onChange(detail);
  }
}
