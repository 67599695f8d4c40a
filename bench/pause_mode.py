"""What pausing the uplink saves, and what it costs in answer time, on the default (3.x) model.

A scripted conversation through a real call (aiortc caller on loopback, `parley serve`'s worker, the
real SDK, the emulator in this process with the 3.x rules): four turns with four seconds of listening
between them, once streaming silence (`PARLEY_SEND_SILENCE=true`) and once pausing after a second of
silence (`false`: quiet trailing audio, then `audioStreamEnd`). Reported: seconds of audio sent per
second of call (what input tokens are billed on) and the answer time of each turn (`response_ms`,
end of the caller's speech to the agent's first audio).

    python -m bench.pause_mode [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

from parley.agent.ice import offer_host_addresses
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import start
from parley.settings import Settings

SPEECH = load_wav("tests/data/speech.wav")
SHORT = SPEECH[: RATE * 9 // 10]
PAUSE_S = 4.0


async def conversation(send_silence: bool, turns: int) -> dict[str, Any]:
    emulator = GeminiEmulator()
    await emulator.start()
    settings = Settings(
        host="127.0.0.1", port=0, backend="emulator", ice_host_addresses=["127.0.0.1"], rate_limit="0"
    )
    settings.send_silence = send_silence
    running = await start(settings, emulator=emulator)
    caller = Caller(f"http://127.0.0.1:{running.port}")
    try:
        await caller.connect()
        for _ in range(turns):
            seen = len(caller.events)
            caller.say(SHORT)
            await caller.wait_for_event("agent_turn_end", timeout_s=30, after=seen)
            await asyncio.sleep(PAUSE_S)
        state = await caller.call_state()
    finally:
        await caller.hang_up()
        await running.stop()
        await emulator.stop()
    answers = [
        e["response_ms"] for e in caller.events if e["type"] == "agent_turn_start" and e.get("response_ms")
    ]
    return {
        "send_silence": send_silence,
        "call_s": state["seconds"],
        "audio_s_sent": state["uplink"]["audio_s_sent"],
        "audio_s_per_call_s": state["uplink"]["audio_s_per_call_s"],
        "response_ms_median": round(statistics.median(answers)) if answers else None,
        "response_ms_max": round(max(answers)) if answers else None,
        "turns_answered": len(answers),
    }


async def main(turns: int) -> None:
    offer_host_addresses(["127.0.0.1"])
    for send_silence in (True, False):
        print(json.dumps(await conversation(send_silence, turns)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=4)
    asyncio.run(main(parser.parse_args().turns))
