"""What bench/browser.py runs inside the page, for Chromium and Firefox alike, and what it makes of it.

The scripts are JS function expressions: Playwright evaluates them as they are, Marionette through
`script_body` (a function body that calls them with its arguments). The knobs are the standard ones a
page has: the receiver's `jitterBufferTarget`, and SDP it can munge on the way out and back in (the
page's own signaling object is wrapped, so the peer connection's local description stays the browser's
own, which Firefox would not let a page change).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RATE = 48000
BURST_S = 0.02
# Unequal gaps between bursts (each over the detector's 0.2 s of quiet), so that a burst's echo cannot
# be taken for another's however long the delay: see mouth_to_ear.
GAPS_S = (0.35, 0.3, 0.5, 0.7, 0.65, 0.4, 0.55)
MAX_DELAY_S = 3.0
PATTERN_TOLERANCE_S = 0.06  # three gaps' summed error: any two triples of GAPS_S differ by 0.34 s or more
assert MAX_DELAY_S < sum(GAPS_S)


@dataclass(frozen=True)
class Setting:
    name: str
    jitter_buffer_target_ms: float | None = None  # RTCRtpReceiver.jitterBufferTarget, set once in call
    # SDP munging, in both the offer the server gets and the answer the browser applies: the offer's
    # fmtp/ptime are what the browser asks to receive, the answer's what the server asks the browser to send
    ptime_ms: int | None = None  # a=ptime and a=maxptime
    fmtp: str = ""  # appended to the Opus fmtp line


SETTINGS = {
    "defaults": Setting("browser defaults"),
    "jbt0": Setting("jitterBufferTarget = 0", jitter_buffer_target_ms=0),
    "ptime10": Setting("a=ptime:10 (and maxptime)", ptime_ms=10),
    "maxplaybackrate16k": Setting(
        "Opus maxplaybackrate=16000", fmtp="maxplaybackrate=16000;sprop-maxcapturerate=16000"
    ),
    "stereo0": Setting("Opus stereo=0", fmtp="stereo=0;sprop-stereo=0"),
}  # fmt: skip


# Wraps the page's signaling: the offer goes out munged, the answer comes back munged.
MUNGE_JS = """(setting) => {
  const munge = (sdp) => {
    const lines = sdp.split("\\r\\n");
    const pt = (line) => line.split(" ")[0].split(":")[1];
    const opus = new Set(lines.filter((l) => /^a=rtpmap:\\d+ opus\\//i.test(l)).map(pt));
    const out = [];
    let audio = false;
    for (let line of lines) {
      if (line.startsWith("m=")) audio = line.startsWith("m=audio");
      if (audio && setting.ptime_ms && /^a=(max)?ptime:/.test(line)) continue;
      if (setting.fmtp && line.startsWith("a=fmtp:") && opus.has(pt(line))) line += ";" + setting.fmtp;
      out.push(line);
      const ptime = setting.ptime_ms;
      if (audio && ptime && line.startsWith("m=audio")) out.push(`a=ptime:${ptime}`, `a=maxptime:${ptime}`);
    }
    return out.join("\\r\\n");
  };
  const signaling = parleyDebug.client.signaling;
  const offer = signaling.offer.bind(signaling);
  signaling.offer = async (sdp, resumeId) => {
    const answer = await offer(munge(sdp), resumeId);
    window.benchAnswer = munge(answer.sdp);
    return { ...answer, sdp: window.benchAnswer };
  };
  return true;
}"""

TARGET_JS = """(ms) => {
  const receivers = parleyDebug.client.pc.getReceivers().filter((r) => r.track.kind === "audio");
  if (!receivers.length || !("jitterBufferTarget" in receivers[0])) return false;
  receivers.forEach((r) => { r.jitterBufferTarget = ms; });
  return receivers.map((r) => r.jitterBufferTarget);
}"""

# One AudioContext taps the microphone track and the remote track: both onsets on its audio clock.
# START_JS starts the taps and takes the first getStats() reading; FINISH_JS, `seconds` later, the
# second, and stops. Two short scripts rather than one that waits: a Firefox script that waited 10 s
# sometimes never returned to Marionette.
START_JS = """async () => {
  const client = parleyDebug.client;
  const context = new AudioContext();
  await context.resume();
  const onsets = { mic: [], remote: [] };
  const quiet = { mic: 0, remote: 0 };
  const sink = context.createGain();
  sink.gain.value = 0;
  sink.connect(context.destination);
  const nodes = [];
  function tap(stream, key) {
    const node = context.createScriptProcessor(256, 1, 1);
    node.onaudioprocess = (e) => {
      const data = e.inputBuffer.getChannelData(0);
      for (let i = 0; i < data.length; i += 1) {
        if (Math.abs(data[i]) > 0.1) {
          const at = e.playbackTime + i / context.sampleRate;
          if (quiet[key] > 0.2 * context.sampleRate) onsets[key].push(at);
          quiet[key] = 0;
        } else {
          quiet[key] += 1;
        }
      }
    };
    context.createMediaStreamSource(stream).connect(node);
    node.connect(sink);
    nodes.push(node);
  }
  tap(client.mic, "mic");
  tap(document.querySelector("#agent").srcObject, "remote");
  const read = async () => {
    const report = await client.pc.getStats();
    const found = {};
    report.forEach((s) => {
      const kind = s.kind || s.mediaType;
      if (s.type === "inbound-rtp" && kind === "audio") found.inbound = s;
      if (s.type === "outbound-rtp" && kind === "audio") found.outbound = s;
      if (s.type === "media-playout" && (s.kind || "audio") === "audio") found.playout = s;
    });
    return found;
  };
  const track = client.mic.getAudioTracks()[0];
  track.stats?.resetLatency?.();
  window.benchMeasure = { context, onsets, nodes, read, track, a: await read(), started: performance.now() };
  return true;
}"""

FINISH_JS = """async () => {
  const { context, onsets, nodes, read, track, a, started } = window.benchMeasure;
  const b = await read();
  const elapsed = (performance.now() - started) / 1000;
  const capture = track.stats ? track.stats.averageLatency : null;
  nodes.forEach((n) => { n.onaudioprocess = null; });
  context.close();
  const d = (key, s = "inbound") => (b[s]?.[key] ?? 0) - (a[s]?.[key] ?? 0);
  const emitted = d("jitterBufferEmittedCount");
  const perSample = (key) => (emitted ? (1000 * d(key)) / emitted : null);
  const has = (key) => typeof b.inbound?.[key] === "number";
  const playoutSamples = d("totalSamplesCount", "playout");
  return {
    onsets,
    jitterBufferMs: perSample("jitterBufferDelay"),
    jitterTargetMs: has("jitterBufferTargetDelay") ? perSample("jitterBufferTargetDelay") : null,
    jitterMinimumMs: has("jitterBufferMinimumDelay") ? perSample("jitterBufferMinimumDelay") : null,
    playoutMs: playoutSamples ? (1000 * d("totalPlayoutDelay", "playout")) / playoutSamples : null,
    captureMs: capture,
    concealed: d("concealedSamples"),
    samples: d("totalSamplesReceived"),
    lost: d("packetsLost"),
    received: d("packetsReceived"),
    sentPerSecond: d("packetsSent", "outbound") / elapsed,
  };
}"""


def script_body(function: str) -> str:
    """A JS function expression as a Marionette script body, called with the script's arguments."""
    return f"return ({function})(...arguments);"


def burst_pcm() -> bytes:
    """Tone bursts (1 kHz, half scale, BURST_S long) at GAPS_S apart, 48 kHz mono s16, about 10 s
    (the microphones loop it)."""
    gaps = np.tile(GAPS_S, 3)
    out = np.zeros(int(RATE * gaps.sum()), np.float64)
    n = int(RATE * BURST_S)
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / RATE)
    for start in np.concatenate([[0.0], np.cumsum(gaps)[:-1]]):
        i = int(RATE * start)
        out[i : i + n] = tone
    return bytes((out * 32767).astype("<i2").tobytes())


def burst_wav(path: Path) -> None:
    """The bursts as a WAV file, for Chromium's fake microphone (it loops)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(burst_pcm())


def _positions(onsets: np.ndarray, scales: tuple[float, float]) -> list[int | None]:
    """Where in GAPS_S each onset is: the k whose three gaps GAPS_S[k:k+3] have the shape of the
    onset's next three, stretched by a factor in `scales`; None where none fits (a burst missed)."""
    n = len(GAPS_S)
    triples = [np.array([GAPS_S[(k + t) % n] for t in range(3)]) for k in range(n)]
    out: list[int | None] = []
    for i in range(onsets.size):
        found = None
        if i + 3 < onsets.size:
            gaps = np.diff(onsets[i : i + 4])
            for k, triple in enumerate(triples):
                scale = float(gaps @ triple / (triple @ triple))
                if (
                    scales[0] <= scale <= scales[1]
                    and np.abs(scale * triple - gaps).sum() < PATTERN_TOLERANCE_S
                ):
                    found = k
        out.append(found)
    return out


def _by_common_delay(mic: np.ndarray, remote: np.ndarray) -> list[float]:
    """The fallback pairing: the most common remote-minus-microphone difference (10 ms bins, up to
    MAX_DELAY_S) is the delay, and each burst's echo the remote onset within half the shortest gap of
    it. Right while the delay holds steady; wrong pairs where it drifts by more than that."""
    diffs = (remote[None, :] - mic[:, None]).ravel()
    diffs = diffs[(diffs > 0) & (diffs < MAX_DELAY_S)]
    if not diffs.size:
        return []
    counts, edges = np.histogram(diffs, bins=np.arange(0.0, MAX_DELAY_S + 0.01, 0.01))
    lag = float(edges[int(np.argmax(counts))])
    out = []
    for sent in mic:
        near = remote[np.abs(remote - sent - lag) < min(GAPS_S) / 2]
        if near.size:
            out.append(float(near[0] - sent))
    return out


def pair(onsets: dict[str, list[float]]) -> tuple[str, list[float]]:
    """(how, mouth-to-ear of each burst paired): by the bursts' shape (mouth_to_ear) where that pairs
    at least half the microphone's bursts; else by the common delay (Firefox's microphone track, its
    echo canceller facing the same tone on the far end, loses about a third of the bursts, and with
    them most intact runs of four)."""
    shaped = mouth_to_ear(onsets)
    if 2 * len(shaped) >= len(onsets["mic"]) - 3:
        return "shape", shaped
    return "common delay", _by_common_delay(np.asarray(onsets["mic"]), np.asarray(onsets["remote"]))


def mouth_to_ear(onsets: dict[str, list[float]]) -> list[float]:
    """Each microphone onset's delay to its own burst's onset on the remote track.

    The gaps between bursts differ (GAPS_S) so that any three in a row have a shape no other three
    have, even as a jitter buffer that fills or drains plays them stretched or squeezed (0.75-1.1): each
    onset on either side is placed in the sequence, and a burst's echo is the next remote onset at the
    same place, within MAX_DELAY_S (the sequence repeats every 3.45 s). With equal gaps a delay over one
    gap paired a burst with an earlier one's echo. A missed burst leaves bursts unpaired.
    """
    mic, remote = np.asarray(onsets["mic"]), np.asarray(onsets["remote"])
    sent, heard = _positions(mic, (0.97, 1.03)), _positions(remote, (0.75, 1.1))
    out = []
    for t, k in zip(mic, sent, strict=True):
        if k is None:
            continue
        later = [float(r) for r, h in zip(remote, heard, strict=True) if h == k and t < r < t + MAX_DELAY_S]
        if later:
            out.append(later[0] - float(t))
    return out


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def row(
    browser: str, setting: Setting, round_no: int, result: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    pairing, values = pair(result["onsets"])
    ms = [v * 1000 for v in values]
    return {
        "browser": browser,
        "setting": setting.name,
        "round": round_no,
        **extra,
        "bursts": len(values),  # paired (how: `pairing`); of these onsets on each side
        "pairing": pairing,
        "onsets": {side: len(result["onsets"][side]) for side in ("mic", "remote")},
        "onset_times_s": {side: [round(t, 4) for t in result["onsets"][side]] for side in ("mic", "remote")},
        "mouth_to_ear_ms": {
            "p50": _round(np.percentile(ms, 50)) if ms else None,
            "p95": _round(np.percentile(ms, 95)) if ms else None,
        },
        "jitter_buffer_ms": _round(result["jitterBufferMs"]),
        "jitter_target_ms": _round(result["jitterTargetMs"]),
        "jitter_minimum_ms": _round(result["jitterMinimumMs"]),
        "playout_ms": _round(result["playoutMs"]),
        "capture_ms": _round(result["captureMs"], 2),
        "concealed_pct": round(100 * result["concealed"] / max(1, result["samples"]), 2),
        "packets_lost": result["lost"],
        "packets_sent_per_s": _round(result["sentPerSecond"]),
    }
