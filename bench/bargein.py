"""Barge-in and answer timing against `parley serve --backend emulator`, with the headless caller.

Each round: the caller speaks, the emulator answers (it echoes the sentence), one second into the answer
the caller speaks again, and the agent must fall silent. Measured at the caller: from the `interrupted`
event to the first of the silent frames that follow, and from the end of each sentence to the first
audio of the answer (`response_ms`: the emulator waits for 0.5 s of silence first, as a model does).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from bench.testsignal import SPEECH_WAV
from parley.caller import RATE, SPEECH_DBFS, Caller, load_wav


def silence_after(caller: Caller, t: float, quiet_frames: int = 5) -> float | None:
    """Arrival of the first frame at or after `t - 0.1` that starts a run of quiet frames."""
    arrivals, levels = caller.heard.arrivals, caller.heard.levels
    for i, arrival in enumerate(arrivals):
        if arrival < t - 0.1:
            continue
        window = levels[i : i + quiet_frames]
        if len(window) == quiet_frames and max(window) < SPEECH_DBFS:
            return arrival
    return None


async def measure(url: str, rounds: int) -> dict[str, Any]:
    speech = load_wav(str(SPEECH_WAV))
    seconds = speech.size / RATE
    caller = Caller(url)
    await caller.connect()
    stops: list[float] = []
    try:
        caller.say(speech)
        for _ in range(rounds):
            seen = len(caller.events)
            await caller.wait_for_event("agent_turn_start", timeout_s=seconds + 10, after=seen)
            await asyncio.sleep(1.0)
            seen = len(caller.events)
            caller.say(speech)
            event = await caller.wait_for_event("interrupted", timeout_s=5, after=seen)
            await asyncio.sleep(0.3)
            silent = silence_after(caller, event["received_at"])
            if silent is not None:
                stops.append(silent - event["received_at"])
        await asyncio.sleep(seconds)
    finally:
        await caller.hang_up()
    responses = [t["response_ms"] for t in caller.turns() if t["response_ms"] is not None]
    sources = [e.get("source") for e in caller.events if e.get("type") == "interrupted"]
    return {
        "rounds": rounds,
        "interrupted_by": {s: sources.count(s) for s in set(sources) if s},
        "client_event_to_silence_ms": {
            "p50": round(float(np.median(stops)) * 1000, 1) if stops else None,
            "max": round(max(stops) * 1000, 1) if stops else None,
        },
        "client_response_ms": {
            "p50": round(float(np.median(responses)), 1) if responses else None,
            "count": len(responses),
        },
    }
