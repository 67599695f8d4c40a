"""A session asked to end ends at once, whatever its socket still holds of the model's reply.

The emulator runs on an event loop of its own, as Gemini runs on its own machine, so it goes on
sending while the agent's loop is stalled (a long collection, a busy core, a stopped process).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from parley.agent.gemini import GeminiSession
from parley.agent.tools import ToolRegistry
from parley.emulator.audio import resample
from parley.emulator.options import EmulatorOptions
from parley.emulator.server import GeminiEmulator
from parley.server import make_client, session_config
from tests.conftest import make_settings
from tests.test_session import SPEECH
from tests.test_session_rules import Listener
from tests.waiting import wait_until

CHUNK = 320  # 20 ms at 16 kHz


@contextmanager
def emulator_on_its_own_loop() -> Iterator[GeminiEmulator]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = GeminiEmulator(options=EmulatorOptions())
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(30)
    try:
        yield emulator
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class StallsOnTheReply(Listener):
    def __init__(self) -> None:
        self.replying = threading.Event()

    def on_model_audio(self, pcm: bytes, arrived_at: float) -> None:
        if not self.replying.is_set():
            self.replying.set()
            time.sleep(1.0)  # the agent's loop stalls while the reply streams in faster than real time


async def test_a_session_ended_during_a_reply_it_has_not_read_ends_at_once() -> None:
    with emulator_on_its_own_loop() as emulator:
        settings = make_settings()
        listener = StallsOnTheReply()
        session = GeminiSession(
            make_client(settings, emulator), session_config(settings, ToolRegistry()), listener
        )
        running = asyncio.create_task(session.run())
        said = resample(SPEECH, 48000, 16000)
        speech_then_silence = np.concatenate([said, np.zeros(16000 * 3, np.int16)])
        for start in range(0, speech_then_silence.size, CHUNK):
            if listener.replying.is_set():
                break
            session.send_audio(speech_then_silence[start : start + CHUNK].tobytes(), time.monotonic())
            await asyncio.sleep(0.02)
        await wait_until(listener.replying.is_set, 20, "the model's reply")
        closing = time.monotonic()
        await session.close()
        await asyncio.wait_for(running, 30)
        # websockets stops reading a socket whose unread messages pile up, and then cannot read the
        # close frame behind them: without reading them out, this took the 10 s close timeout
        assert time.monotonic() - closing < 5
