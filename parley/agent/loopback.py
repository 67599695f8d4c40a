"""`parley serve --backend loopback`: every chunk of the caller's audio comes straight back to them.

A `LoopbackSession` stands where the `GeminiSession` would: it takes the caller's 16 kHz PCM, upsamples
it to 24 kHz (what Gemini sends) and hands it to the call as model audio, so it goes down the very path
Gemini's voice takes (resampling to 48 kHz, the playout buffer, the paced track, the Opus encoder). No
model, no socket, no turns: a mic check for users, and the benchmark's stand-in for Gemini, measuring
the media path and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import av
import numpy as np
from google import genai

from parley.agent.downlink import PlayoutBuffer
from parley.agent.gemini import INPUT_BYTES_PER_SECOND, GeminiSession, SessionConfig, SessionListener

MODEL_RATE = 24000  # what Gemini sends: the echo takes the same resampling path down


class LoopbackClient:
    """Takes the genai.Client's place for a worker whose calls echo (`make_session` checks for it)."""


def loopback_client() -> genai.Client:
    return cast(genai.Client, LoopbackClient())


def make_session(client: genai.Client, config: SessionConfig, listener: SessionListener) -> GeminiSession:
    """The session for a new call: Gemini, or a loopback when the worker was given a LoopbackClient."""
    if isinstance(client, LoopbackClient):
        return LoopbackSession(client, config, listener)
    return GeminiSession(client, config, listener)


class LoopbackSession(GeminiSession):
    """Echoes the caller's audio as the model's, at once. The statistics of a GeminiSession are kept."""

    def __init__(self, client: Any, config: SessionConfig, listener: SessionListener) -> None:
        super().__init__(client, config, listener)
        self._echo_to = listener
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=MODEL_RATE)
        self._stopped = asyncio.Event()
        buffer = getattr(listener, "playout_buffer", None)
        if isinstance(buffer, PlayoutBuffer):
            buffer.live = True  # an echo is real time: lateness is made up in its silences

    def send_audio(self, pcm: bytes, arrived_at: float) -> None:
        if self._stopped.is_set() or not pcm:
            return
        now = time.monotonic()
        if arrived_at:
            self.uplink_latency_s.append(now - arrived_at)
        self.stats.audio_bytes_sent += len(pcm)
        samples = np.frombuffer(pcm, dtype="<i2")[: len(pcm) // 2]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INPUT_BYTES_PER_SECOND // 2
        for out in self._resampler.resample(frame):
            self._echo_to.on_model_audio(bytes(out.planes[0])[: out.samples * 2], now)

    def end_audio_stream(self) -> None:
        pass  # nothing is buffered

    async def run(self) -> None:
        self.stats.connections = 1
        self.connected = True
        self._echo_to.on_session_event("connected", {"resumed": False, "connection": 1, "loopback": True})
        try:
            await self._stopped.wait()
        finally:
            self.connected = False

    async def close(self) -> None:
        self._stopped.set()
