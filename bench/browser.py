"""The browser's share of the delay: mouth-to-ear through `parley serve --backend loopback` in real Chromium.

    python -m bench.browser [--seconds 12]     (also the `browser` part of `make bench`)

Chromium's fake microphone plays 20 ms tone bursts every 500 ms. In the page, one AudioContext taps the
microphone track and the agent's remote track with two ScriptProcessor nodes, so both onsets are on
the audio clock of one context: mouth-to-ear is a burst's onset on the remote track minus its onset
on the microphone track (capture buffering, the encoder, both network hops, the whole agent, the
jitter buffer and the decoder, up to where the page can hear it). getStats gives the jitter buffer's
delay and target over the run. Each setting runs on a fresh call: the browser's defaults, then the
receiver's `jitterBufferTarget` set to 0 (Chromium's standard knob for "as low as it can").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

RATE = 48000
BURST_S = 0.02
PERIOD_S = 0.5
CHROMIUM = "/usr/bin/chromium"

MEASURE_JS = """async (seconds) => {
  const client = parleyDebug.client;
  const context = new AudioContext();
  await context.resume();
  const onsets = { mic: [], remote: [] };
  const quiet = { mic: 0, remote: 0 };
  const sink = context.createGain();
  sink.gain.value = 0;
  sink.connect(context.destination);
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
  }
  tap(client.mic, "mic");
  tap(document.querySelector("#agent").srcObject, "remote");
  const before = await client.pc.getStats();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const after = await client.pc.getStats();
  const inbound = (report) => [...report.values()]
    .find((s) => s.type === "inbound-rtp" && s.kind === "audio");
  const a = inbound(before), b = inbound(after);
  const emitted = b.jitterBufferEmittedCount - a.jitterBufferEmittedCount;
  context.close();
  return {
    onsets,
    jitterBufferMs: 1000 * (b.jitterBufferDelay - a.jitterBufferDelay) / emitted,
    jitterTargetMs: 1000 * ((b.jitterBufferTargetDelay ?? 0) - (a.jitterBufferTargetDelay ?? 0)) / emitted,
    concealed: b.concealedSamples - a.concealedSamples,
    samples: b.totalSamplesReceived - a.totalSamplesReceived,
  };
}"""


def burst_wav(path: Path) -> None:
    """Tone bursts (1 kHz, half scale) every PERIOD_S, for Chromium's fake microphone (it loops)."""
    period = np.zeros(int(RATE * PERIOD_S), np.float64)
    n = int(RATE * BURST_S)
    period[:n] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / RATE)
    samples = (np.tile(period, 20) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())


def mouth_to_ear(onsets: dict[str, list[float]]) -> list[float]:
    remote = np.asarray(onsets["remote"])
    out = []
    for sent in onsets["mic"]:
        i = int(np.searchsorted(remote, sent))
        if i < remote.size and remote[i] - sent < 0.4:
            out.append(float(remote[i] - sent))
    return out


async def measure(url: str, seconds: float) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mic = Path(tmp) / "bursts.wav"
        burst_wav(mic)
        args = [
            "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic}",
            "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ]  # fmt: skip
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                for name, target in (("browser defaults", None), ("jitterBufferTarget = 0", 0)):
                    page = await (await browser.new_context(permissions=["microphone"])).new_page()
                    await page.goto(url)
                    await page.click("#call")
                    in_call = "() => parleyDebug.client.state === 'in-call'"
                    await page.wait_for_function(in_call, timeout=20000)
                    if target is not None:
                        await page.evaluate(
                            f"() => parleyDebug.client.pc.getReceivers().forEach((r) => {{"
                            f" if (r.track.kind === 'audio') r.jitterBufferTarget = {target}; }})"
                        )
                    await page.wait_for_timeout(2000)  # the jitter buffer settles
                    result = await page.evaluate(MEASURE_JS, seconds)
                    values = mouth_to_ear(result["onsets"])
                    row = {
                        "setting": name,
                        "bursts": len(values),
                        "mouth_to_ear_ms": {
                            "p50": round(float(np.percentile(values, 50)) * 1000, 1) if values else None,
                            "p95": round(float(np.percentile(values, 95)) * 1000, 1) if values else None,
                        },
                        "jitter_buffer_ms": round(result["jitterBufferMs"], 1),
                        "jitter_target_ms": round(result["jitterTargetMs"], 1),
                        "concealed_pct": round(100 * result["concealed"] / max(1, result["samples"]), 2),
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    await page.click("#hangup")
                    await page.context.close()
            finally:
                await browser.close()
    return rows


def main() -> None:
    from bench.run import start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    server = start_server("loopback", 18241)
    try:
        rows = asyncio.run(measure(server.url, args.seconds))
    finally:
        server.stop()
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
