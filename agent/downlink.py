"""Downlink: the model's 24 kHz speech, resampled once on arrival and played out as paced 20 ms frames.

`ModelAudio` turns each chunk from Gemini into 48 kHz samples with one stateful resampler per turn (no
clicks at chunk boundaries) and queues them in a `PlayoutBuffer`. `PlayoutTrack` is the outgoing WebRTC
track: aiortc's sender asks for frames as fast as it can encode them, so the track paces itself on an
absolute clock and sends silence whenever the buffer is empty. Every frame it returns is built here, so
no malformed frame can reach the encoder (one bad frame silently kills aiortc's sender).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

PLAYOUT_RATE = 48000
FRAME_SAMPLES = PLAYOUT_RATE // 50  # 20 ms: longer frames become several packets with one timestamp
TIME_BASE = fractions.Fraction(1, PLAYOUT_RATE)
FADE_SAMPLES = PLAYOUT_RATE * 5 // 1000  # a 5 ms fade on a cut avoids a click
# A sender that fell this far behind its clock (a stalled loop) starts a new clock rather than bursting.
MAX_LATENESS_S = 0.1


class PlayoutBuffer:
    """48 kHz mono samples waiting to be played, as a queue of chunks with a read offset."""

    def __init__(self) -> None:
        # (samples, arrival time, when an ideal player would start them: at arrival, or when the audio
        # ahead of them has played, whichever is later)
        self._chunks: deque[tuple[np.ndarray, float, float]] = deque()
        self._offset = 0
        self.queued = 0
        self._ideal_end = 0.0
        # For the chunk the last pop() started: when its first sample would have played in the ideal
        # player, as a time to compare with the frame's send time (its offset in the frame taken off).
        self.started_due: float | None = None

    def push(self, samples: np.ndarray, arrived_at: float) -> None:
        if samples.size:
            due = max(arrived_at, self._ideal_end)
            self._ideal_end = due + samples.size / PLAYOUT_RATE
            self._chunks.append((samples, arrived_at, due))
            self.queued += samples.size

    def pop(self, count: int) -> tuple[np.ndarray, float | None]:
        """Up to `count` samples, and the arrival time of the first chunk this read started, if any."""
        parts: list[np.ndarray] = []
        started_chunk_at: float | None = None
        taken = 0
        while count and self._chunks:
            chunk, arrived_at, due = self._chunks[0]
            if self._offset == 0 and started_chunk_at is None:
                started_chunk_at = arrived_at
                self.started_due = due - taken / PLAYOUT_RATE
            take = min(count, chunk.size - self._offset)
            parts.append(chunk[self._offset : self._offset + take])
            self._offset += take
            count -= take
            taken += take
            if self._offset == chunk.size:
                self._chunks.popleft()
                self._offset = 0
        out = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.zeros(0, np.int16)
        self.queued -= out.size
        return out, started_chunk_at

    def cut(self) -> int:
        """Drop everything queued except a short fade-out of what would have played next."""
        dropped = self.queued
        head, _ = self.pop(FADE_SAMPLES)
        self._chunks.clear()
        self._offset = 0
        self.queued = 0
        self._ideal_end = 0.0
        if head.size:
            ramp = np.linspace(1.0, 0.0, head.size, endpoint=False)
            self.push((head * ramp).astype(np.int16), time.monotonic())
        return dropped - head.size


class ModelAudio:
    """Gemini's 24 kHz PCM16 chunks -> 48 kHz samples in the playout buffer, turn by turn."""

    def __init__(self, buffer: PlayoutBuffer, source_rate: int = 24000) -> None:
        self._buffer = buffer
        self._source_rate = source_rate
        self._resampler: av.AudioResampler | None = None
        self._discarding = False

    def push(self, pcm: bytes, arrived_at: float) -> None:
        if self._discarding or not pcm:
            return
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PLAYOUT_RATE)
        samples = np.frombuffer(pcm, dtype="<i2")[: len(pcm) // 2]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._source_rate
        self._queue(self._resampler.resample(frame), arrived_at)

    def interrupt(self) -> int:
        """Barge-in: cut what is queued and ignore the rest of this turn. Returns samples dropped."""
        self._discarding = True
        self._resampler = None
        return self._buffer.cut()

    def end_turn(self) -> None:
        """The turn is over: play the resampler's last samples and accept the next turn's audio."""
        if self._resampler is not None and not self._discarding:
            self._queue(self._resampler.resample(None), time.monotonic())
        self._resampler = None
        self._discarding = False

    def _queue(self, frames: list[av.AudioFrame], arrived_at: float) -> None:
        for out in frames:
            self._buffer.push(out.to_ndarray().reshape(-1), arrived_at)


class PlayoutTrack(MediaStreamTrack):
    """The agent's voice: exactly 20 ms s16 mono 48 kHz frames, paced on a monotonic clock."""

    kind = "audio"

    def __init__(
        self, buffer: PlayoutBuffer, on_chunk_started: Callable[[float], None] | None = None
    ) -> None:
        super().__init__()
        self.buffer = buffer
        self._on_chunk_started = on_chunk_started
        self._clock_start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.silent_frames = 0
        self._after_frame: list[Callable[[], None]] = []

    def after_next_frame(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the next frame leaves this track (for the barge-in and set-up timings)."""
        self._after_frame.append(callback)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now - self._pts / PLAYOUT_RATE
        due = self._clock_start + self._pts / PLAYOUT_RATE
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > MAX_LATENESS_S:
            self._clock_start = now - self._pts / PLAYOUT_RATE
        samples, chunk_arrived_at = self.buffer.pop(FRAME_SAMPLES)
        if samples.size < FRAME_SAMPLES:
            if samples.size == 0:
                self.silent_frames += 1
            samples = np.concatenate([samples, np.zeros(FRAME_SAMPLES - samples.size, np.int16)])
        if chunk_arrived_at is not None and self._on_chunk_started is not None:
            # the time to measure the chunk's added latency from: its arrival, or the end of the audio
            # queued ahead of it when it came (that wait is playback, not latency)
            self._on_chunk_started(self.buffer.started_due or chunk_arrived_at)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PLAYOUT_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        self.frames_sent += 1
        if self._after_frame:
            callbacks, self._after_frame = self._after_frame, []
            for callback in callbacks:
                callback()
        return frame
