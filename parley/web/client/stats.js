// What the page measures itself: who is speaking (from the levels of the microphone and of the
// agent's audio), the voice-to-voice delay of each turn, and the connection's getStats().
import { Meter } from "./media.js";

const SPEECH_DB = -50; // a level above this is speech (dBFS)
const SILENCE_DB = -56; // ... and below this, silence again (hysteresis)
const SPEECH_START_MS = 120; // speech must last this long to count
const USER_HANGOVER_MS = 350; // this much silence ends the user's speech
const AGENT_HANGOVER_MS = 300;
const TICK_MS = 20;
const HISTORY = 1500; // level samples kept for debugging (30 s)

export function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** The levels a call's debugging shows (parleyDebug.client.debug). */
export function freshDebug() {
  return { local: [], remote: [], localDb: -120, remoteDb: -120, agentLoudMs: 0, events: [] };
}

/**
 * Speaking detection on two levels, one tick every TICK_MS. The user: a start guard, hysteresis and a
 * hangover; the end of speech is the last loud moment. The agent, as heard: its first audio after the
 * user's end of speech closes a turn.
 */
export class SpeakingDetector {
  constructor(debug) {
    this.debug = debug;
    this.speaking = { user: false, agent: false };
    this.loudSince = null;
    this.lastLoud = 0;
    this.userEnd = null;
    this.agentLast = 0;
  }

  /** Returns {changed, turnMs}: whether who speaks changed, and a finished turn's delay (or null). */
  tick(now, local, remote) {
    const debug = this.debug;
    debug.localDb = local;
    debug.remoteDb = remote;
    debug.local.push([Math.round(now), Math.round(local)]);
    debug.remote.push([Math.round(now), Math.round(remote)]);
    if (debug.local.length > HISTORY) debug.local.shift();
    if (debug.remote.length > HISTORY) debug.remote.shift();
    let { user, agent } = this.speaking;
    let turnMs = null;

    if (local > SPEECH_DB) {
      this.loudSince ??= now;
      this.lastLoud = now;
      if (!user && now - this.loudSince >= SPEECH_START_MS) { user = true; this.userEnd = null; }
    } else if (!user) {
      this.loudSince = null;
    }
    if (user && local < SILENCE_DB && now - this.lastLoud >= USER_HANGOVER_MS) {
      user = false;
      this.loudSince = null;
      this.userEnd = this.lastLoud;
    }

    if (remote > SPEECH_DB) {
      debug.agentLoudMs += TICK_MS;
      if (!agent) {
        agent = true;
        if (this.userEnd !== null && !user) {
          turnMs = Math.round(now - this.userEnd);
          this.userEnd = null;
        }
      }
      this.agentLast = now;
    } else if (agent && now - this.agentLast >= AGENT_HANGOVER_MS) {
      agent = false;
    }

    const changed = user !== this.speaking.user || agent !== this.speaking.agent;
    if (changed) this.speaking = { user, agent };
    return { changed, turnMs };
  }
}

/**
 * The two level meters and the speaking detector, ticking every TICK_MS while a call has a microphone.
 * onSpeaking({user, agent}) when who speaks changes; onTurn(ms) when the agent answers a turn.
 */
export class Levels {
  constructor(context, debug, { muted, onSpeaking, onTurn }) {
    this.context = context;
    this.detector = new SpeakingDetector(debug);
    this.muted = muted;
    this.local = null;
    this.remote = null;
    this.timer = setInterval(() => {
      const local = this.local && !this.muted() ? this.local.level() : -120;
      const remote = this.remote ? this.remote.level() : -120;
      const { changed, turnMs } = this.detector.tick(performance.now(), local, remote);
      if (turnMs !== null) onTurn(turnMs);
      if (changed) onSpeaking({ ...this.detector.speaking });
    }, TICK_MS);
  }

  /** Measure this microphone stream from now on. */
  setLocal(stream) {
    this.local?.disconnect();
    this.local = new Meter(this.context, stream);
  }

  /** Measure the agent's stream from now on. */
  setRemote(stream) {
    this.remote?.disconnect();
    this.remote = new Meter(this.context, stream);
  }

  stop() {
    clearInterval(this.timer);
    this.local?.disconnect();
    this.remote?.disconnect();
    this.local = null;
    this.remote = null;
  }
}

/** Seconds as milliseconds: a tenth below 10 ms, whole above. */
export function roundMs(seconds) {
  const ms = seconds * 1000;
  return ms < 10 ? Math.round(ms * 10) / 10 : Math.round(ms);
}

/**
 * One getStats() reading: round trip, the audio jitter buffer, loss, concealment and playout. `previous`
 * (kept by the caller between readings) lets playout be the last window's, not the call's average.
 */
export async function readStats(pc, previous = {}) {
  const report = await pc.getStats();
  let pairId = null;
  let inbound = null;
  let remote = null;
  let playout = null;
  const pairs = [];
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") inbound = s;
    if (s.type === "candidate-pair") pairs.push(s);
    if (s.type === "remote-inbound-rtp" && (s.kind || s.mediaType) === "audio") remote = s;
    if (s.type === "media-playout" && (s.kind || "audio") === "audio") playout = s;
  });
  const pair = (pairId && report.get(pairId))
    || pairs.find((p) => p.selected)
    || pairs.find((p) => p.nominated && p.state === "succeeded");
  const stats = {};
  // The network round trip: ICE's own (STUN) measure where the browser has one, else RTCP's (Firefox's
  // remote-inbound-rtp), which also holds the server's time to answer. On loopback it is well under a
  // millisecond: rounded to whole ms it read "0 ms", so below 10 ms it keeps a tenth.
  if (pair && typeof pair.currentRoundTripTime === "number") {
    stats.rttMs = roundMs(pair.currentRoundTripTime);
    stats.rttSource = "ice";
  } else if (remote && typeof remote.roundTripTime === "number") {
    stats.rttMs = roundMs(remote.roundTripTime);
    stats.rttSource = "rtcp";
  }
  if (inbound) {
    if (inbound.jitterBufferEmittedCount) {
      // over the window since the last reading where it emitted anything, else over the call: what the
      // buffer holds now (Firefox starts a call with ~2 s in it and drains it slowly)
      const last = previous.inbound;
      const emitted = inbound.jitterBufferEmittedCount - (last?.jitterBufferEmittedCount ?? 0);
      const window = emitted > 0 && last ? last : {};
      const perSample = (key) => Math.round(((inbound[key] - (window[key] ?? 0)) / (inbound.jitterBufferEmittedCount - (window.jitterBufferEmittedCount ?? 0))) * 1000);
      stats.jitterBufferMs = perSample("jitterBufferDelay");
      // what the browser aimed for: above the delay it kept, it is still filling; below, draining
      if (typeof inbound.jitterBufferTargetDelay === "number") stats.jitterBufferTargetMs = perSample("jitterBufferTargetDelay");
      previous.inbound = inbound;
    }
    stats.packetsLost = inbound.packetsLost ?? 0;
    stats.packetsReceived = inbound.packetsReceived ?? 0;
    stats.concealedSamples = inbound.concealedSamples ?? 0;
    if (inbound.totalSamplesReceived) {
      stats.concealedPct = Math.round((1000 * (inbound.concealedSamples || 0)) / inbound.totalSamplesReceived) / 10;
    }
    if (typeof inbound.jitter === "number") stats.jitterMs = Math.round(inbound.jitter * 1000);
  }
  // The browser's own share after the jitter buffer: from the decoder to the speakers (Chromium's
  // media-playout). null: this browser reports none (Firefox), which the panel shows as "n/a".
  if (playout?.totalSamplesCount) {
    const samples = playout.totalSamplesCount - (previous.playout?.totalSamplesCount ?? 0);
    const delay = playout.totalPlayoutDelay - (previous.playout?.totalPlayoutDelay ?? 0);
    // over the last reading's window where there was one (a call's start weighs on the average)
    stats.playoutMs = Math.round((samples > 0 ? delay / samples : playout.totalPlayoutDelay / playout.totalSamplesCount) * 1000);
    previous.playout = playout;
  } else if (inbound) {
    stats.playoutMs = null;
  }
  return stats;
}

/**
 * The browser's share before the network, from what it reports outside getStats: capture, the
 * microphone track's own latency (MediaStreamTrack `stats`, Chromium: from the device to the track,
 * averaged since the last reading; null where the browser has none, Firefox). The AudioContext's
 * `outputLatency` is not read: with the page reading it every second, Firefox on PulseAudio stopped
 * answering (docs/benchmarks.md).
 */
export function readLocalShare(track) {
  const share = { captureMs: null };
  const trackStats = track?.stats;
  if (trackStats && typeof trackStats.averageLatency === "number") {
    share.captureMs = roundMs(trackStats.averageLatency / 1000); // the spec's unit is milliseconds
    trackStats.resetLatency?.();
  }
  return share;
}
