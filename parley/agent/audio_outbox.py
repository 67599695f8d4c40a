"""Caller audio on its way to Gemini: waiting to go up, and kept since the last resumption handle.

A resumed session knows nothing after its handle, so what was sent since is kept and sent again on the
next connection; audio that arrives while no connection is up waits. Both together hold at most
`resend_limit` bytes, the oldest going first (and counted). Nothing that leaves is ever digital zeros.
"""

from __future__ import annotations

from collections import deque

from parley.agent.live_rules import ComfortNoise
from parley.agent.session import SessionStats


class AudioOutbox:
    def __init__(self, chunk_bytes: int, resend_limit: int, stats: SessionStats) -> None:
        self._chunk_bytes = chunk_bytes
        self._resend_limit = resend_limit
        self._stats = stats
        self._noise = ComfortNoise()
        self._partial = bytearray()
        self._partial_arrived_at = 0.0
        # (chunk, when its first packet arrived): the arrival time measures the uplink's added latency.
        # An empty chunk marks audioStreamEnd.
        self._waiting: deque[tuple[bytes, float]] = deque()
        self._waiting_bytes = 0
        self._since_handle: deque[bytes] = deque()
        self._since_handle_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, pcm: bytes, arrived_at: float) -> None:
        """Caller PCM, cut into chunks of the uplink's size."""
        if not self._partial:
            self._partial_arrived_at = arrived_at
        self._partial += pcm
        while len(self._partial) >= self._chunk_bytes:
            chunk = bytes(self._partial[: self._chunk_bytes])
            del self._partial[: self._chunk_bytes]
            self._queue(chunk, self._partial_arrived_at)
            self._partial_arrived_at = arrived_at
        self._trim()

    def end_stream(self, quiet_s: float) -> None:
        """What is buffered, `quiet_s` of comfort noise (real audio, never zeros), then the end marker."""
        if self._partial:
            self._queue(bytes(self._partial), self._partial_arrived_at)
            self._partial.clear()
        for _ in range(round(quiet_s * 1000 / max(1, self._chunk_bytes * 1000 // 32000))):
            self._queue(self._noise.take(self._chunk_bytes), 0.0)
        self._waiting.append((b"", 0.0))
        self._trim()

    def next(self) -> tuple[bytes, float]:
        """The oldest chunk waiting (b"" for the stream's end), with zeros made comfort noise."""
        chunk, arrived_at = self._waiting[0]
        return (self._noise.unzero(chunk) if chunk else chunk), arrived_at

    def sent(self) -> None:
        """The oldest chunk went up: keep it until a handle covers it."""
        chunk, _ = self._waiting.popleft()
        if not chunk:
            return
        self._waiting_bytes -= len(chunk)
        self._since_handle.append(chunk)
        self._since_handle_bytes += len(chunk)
        self._stats.audio_bytes_sent += len(chunk)
        self._trim()

    def handle_issued(self) -> None:
        """The service has everything sent so far: nothing to send again."""
        self._since_handle.clear()
        self._since_handle_bytes = 0

    def replay(self) -> None:
        """A new connection resumes at the handle: what was sent after it goes again, first."""
        if not self._since_handle:
            return
        self._stats.audio_bytes_resent += self._since_handle_bytes
        self._waiting.extendleft((chunk, 0.0) for chunk in reversed(self._since_handle))
        self._waiting_bytes += self._since_handle_bytes
        self.handle_issued()

    def _queue(self, chunk: bytes, arrived_at: float) -> None:
        self._waiting.append((chunk, arrived_at))
        self._waiting_bytes += len(chunk)

    def _trim(self) -> None:
        while self._since_handle and self._since_handle_bytes + self._waiting_bytes > self._resend_limit:
            self._since_handle_bytes -= len(self._since_handle.popleft())
        while self._waiting and self._waiting_bytes > self._resend_limit:
            dropped, _ = self._waiting.popleft()
            self._waiting_bytes -= len(dropped)
            self._stats.audio_bytes_dropped += len(dropped)
