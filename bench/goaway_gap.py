"""How long a goAway switch stops the caller's audio, by Live model rules.

A Parley Gemini session (the real SDK, over TLS) talks to the emulator in this process while caller
audio is fed in real time, 20 ms at a time; the emulator sends a goAway every couple of seconds. The
gap is the time from the moment the old connection stops taking audio to the moment the new one is
ready for it (the audio in between is buffered and sent then, not lost). Three ways of switching:
2.5 rules (make-before-break), 3.x rules (close first, then resume), and a 2.5 session whose
concurrent resume is refused with 1011 (it falls back to closing first, once).

    python -m bench.goaway_gap [--switches 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np
from google import genai
from google.genai import types

from parley.agent.gemini import GeminiSession, SessionConfig
from parley.emulator.server import EmulatorOptions, GeminiEmulator

RATE = 16000
_t = np.arange(RATE * 2) / RATE
# Two seconds a turn: 0.6 s of a 300 Hz tone at -20 dBFS (a "word" the emulator answers, so handles
# are issued and every switch is a resume), then quiet that is not zero.
_TURN = np.where(_t < 0.6, 3277 * np.sin(2 * np.pi * 300 * _t), 16).astype("<i2").tobytes()
CHUNKS = [_TURN[i : i + 640] for i in range(0, len(_TURN), 640)]


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_model_audio(self, pcm: bytes, arrived_at: float) -> None: ...
    def on_interrupted(self) -> None: ...
    def on_turn_complete(self, cut: bool = False) -> None: ...
    def on_transcript(self, role: str, text: str, finished: bool) -> None: ...
    def on_audio_sent(self, latency_s: float) -> None: ...
    def on_grounding(self, detail: dict[str, Any]) -> None: ...
    def on_observed(self, kind: str, detail: dict[str, Any]) -> None: ...

    def on_session_event(self, kind: str, detail: dict[str, Any]) -> None:
        self.events.append((kind, detail))


async def measure(model: str, refuse_concurrent: bool, switches: int) -> dict[str, Any]:
    options = EmulatorOptions(refuse_concurrent_resume=refuse_concurrent or None, playout_speed=4.0)
    emulator = GeminiEmulator(options=options)
    await emulator.start()
    client = genai.Client(
        api_key="bench",
        http_options=types.HttpOptions(
            base_url=emulator.base_url,
            api_version="v1beta",
            async_client_args={"ssl": emulator.client_ssl_context()},
        ),
    )
    listener = Listener()
    session = GeminiSession(client, SessionConfig(model=model, goaway_margin_s=0.5), listener)
    runner = asyncio.create_task(session.run())
    started = time.monotonic()

    async def feed() -> None:
        n = 0
        while True:
            session.send_audio(CHUNKS[n % len(CHUNKS)], time.monotonic())
            n += 1
            await asyncio.sleep(max(0.0, started + n * 0.02 - time.monotonic()))

    feeder = asyncio.create_task(feed())
    try:
        while len(session.stats.switch_gaps_ms) < switches:
            await asyncio.sleep(2.0)
            if not runner.done() and emulator.open_connections() and session.stats.connections > 0:
                await emulator.go_away(10.0)
            if runner.done():
                runner.result()
        # the fallback's own reconnect is part of that switch's cost: from goaway_switch to connected
        fallbacks = [
            d["gap_ms"] for kind, d in listener.events if kind == "goaway_switched" and d.get("fallback")
        ]
    finally:
        feeder.cancel()
        await session.close()
        await asyncio.gather(runner, feeder, return_exceptions=True)
        await emulator.stop()
    gaps = session.stats.switch_gaps_ms[:switches]
    return {
        "model": model,
        "refuse_concurrent_resume": refuse_concurrent,
        "switches": len(gaps),
        "gap_ms_median": round(statistics.median(gaps), 1),
        "gap_ms_max": round(max(gaps), 1),
        "fallback_gaps_ms": fallbacks,  # switches whose concurrent resume was refused
        "audio_s_dropped": session.stats.audio_bytes_dropped / 32000,
        "reconnects": session.stats.reconnects,
        "resumed": sum(1 for c in emulator.connections if c.resumed),
    }


async def main(switches: int) -> None:
    # The SDK builds its models on first use: a first run, thrown away, keeps that out of the figures.
    await measure("gemini-3.8-live", False, 2)
    rows = [
        await measure("gemini-2.5-flash-native-audio-preview-12-2025", False, switches),
        await measure("gemini-3.8-live", False, switches),
        await measure("gemini-2.5-flash-native-audio-preview-12-2025", True, switches),
    ]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=10)
    asyncio.run(main(parser.parse_args().switches))
