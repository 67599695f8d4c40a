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

import av
import numpy as np

from parley.agent.session import SessionFactory, SessionListener, SessionStats

INPUT_RATE = 16000
MODEL_RATE = 24000  # what Gemini sends: the echo takes the same resampling path down


class LoopbackSession:
    """Echoes the caller's audio as the model's, at once, counting it as a Gemini session would."""

    def __init__(self, listener: SessionListener) -> None:
        self._listener = listener
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=MODEL_RATE)
        self._stopped = asyncio.Event()
        self.stats = SessionStats()
        self.live_audio = True  # an echo is real time: lateness is made up in its silences

    def send_audio(self, pcm: bytes, arrived_at: float) -> None:
        if self._stopped.is_set() or not pcm:
            return
        now = time.monotonic()
        if arrived_at:
            self._listener.on_audio_sent(now - arrived_at)
        self.stats.audio_bytes_sent += len(pcm)
        samples = np.frombuffer(pcm, dtype="<i2")[: len(pcm) // 2]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INPUT_RATE
        for out in self._resampler.resample(frame):
            self._listener.on_model_audio(bytes(out.planes[0])[: out.samples * 2], now)

    def send_video(self, jpeg: bytes) -> None:
        self.stats.video_frames_sent += 1  # an echo has no eyes: counted, as sent, and let go
        self.stats.video_bytes_sent += len(jpeg)

    def end_audio_stream(self) -> None:
        pass  # nothing is buffered

    def caller_connected(self) -> None:
        pass  # an echo never speaks first

    async def run(self) -> None:
        self.stats.connections = 1
        self._listener.on_session_event("connected", {"resumed": False, "connection": 1, "loopback": True})
        await self._stopped.wait()

    async def close(self) -> None:
        self._stopped.set()


def loopback_sessions() -> SessionFactory:
    return LoopbackSession
