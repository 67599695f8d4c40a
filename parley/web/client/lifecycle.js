// What phones do to a call, handled: the page going to the background and back (visibilitychange),
// the default microphone changing mid-call (devicechange: a headset plugged in or out), and the
// system ending the microphone (an incoming phone call takes it: the track's `ended`). The output
// needs nothing here: an <audio> element with no sinkId follows the system's default output.
import { LIVE_STATES } from "./events.js";
import { play } from "./media.js";

/** Two tracks from the same device? Chromium's default device keeps the id "default" across
 *  changes, but its label ("Default - Headset") and group change. */
function sameDevice(a, b) {
  const x = a.getSettings?.() || {};
  const y = b.getSettings?.() || {};
  return x.deviceId === y.deviceId && x.groupId === y.groupId && a.label === b.label;
}

export class PageLifecycle {
  /** @param {import("../parley-client.js").ParleyClient} client */
  constructor(client) {
    this.client = client;
    this._onVisibility = () => this.visibility();
    this._onDeviceChange = () => this.deviceChange().catch(() => {});
    this._busy = false;
  }

  start() {
    globalThis.document?.addEventListener("visibilitychange", this._onVisibility);
    navigator.mediaDevices?.addEventListener?.("devicechange", this._onDeviceChange);
  }

  stop() {
    globalThis.document?.removeEventListener("visibilitychange", this._onVisibility);
    navigator.mediaDevices?.removeEventListener?.("devicechange", this._onDeviceChange);
  }

  /** In the background the call carries on (the page says so); back in front, whatever a phone may
   *  have suspended meanwhile is brought back: audio output, the microphone, the connection. */
  visibility() {
    const c = this.client;
    if (!LIVE_STATES.includes(c.state)) return;
    const hidden = globalThis.document?.visibilityState === "hidden";
    c._emit("visibility", { hidden });
    if (hidden) return;
    c.context?.resume?.().catch(() => {});
    if (c.audio?.srcObject && c.audio.paused) play(c.audio, c._onAutoplay);
    const track = c.mic?.getAudioTracks()[0];
    if (track && track.readyState === "ended") c._micInterrupted();
    c._maybeReconnectNow();
  }

  /** Following the default microphone (no device chosen): a new default is taken up at once, on the
   *  same call (the sender's track is replaced). */
  async deviceChange() {
    const c = this.client;
    if (!c.mic || !LIVE_STATES.includes(c.state) || this._busy) return;
    await c._listDevices();
    if (c.deviceId) return; // the user chose this one: keep it (if it goes, its track ends)
    this._busy = true;
    try {
      const current = c.mic.getAudioTracks()[0];
      const fresh = await c._openMic("").catch(() => null);
      if (!fresh) return;
      const track = fresh.getAudioTracks()[0];
      if (!c.mic || (current && current.readyState === "live" && sameDevice(current, track))) {
        fresh.getTracks().forEach((t) => t.stop());
        return;
      }
      await c._useMic(fresh);
      c._emit("mic", { state: "switched", label: track.label });
    } finally {
      this._busy = false;
    }
  }
}
