"""The door between a call and whatever it talks to: a Gemini Live conversation, or the loopback echo.

A call makes its session through a `SessionFactory` handed to the worker, feeds it the caller's PCM
(`send_audio`) and hears back through the `SessionListener` it passes in (itself). Nothing else crosses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class SessionListener(Protocol):
    def on_model_audio(self, pcm: bytes, arrived_at: float) -> None: ...
    def on_interrupted(self) -> None: ...
    def on_turn_complete(self, cut: bool = False) -> None: ...
    def on_transcript(self, role: str, text: str, finished: bool) -> None: ...
    def on_session_event(self, kind: str, detail: dict[str, Any]) -> None: ...
    def on_grounding(self, detail: dict[str, Any]) -> None:
        """An answer grounded with Google Search: its `sources` ({title, uri}) and `queries`."""

    def on_audio_sent(self, latency_s: float) -> None:
        """A chunk of caller audio left for the model `latency_s` after its first packet arrived."""

    def on_observed(self, kind: str, detail: dict[str, Any]) -> None:
        """For the call's observers only, never the caller: tool arguments and results, grounding."""


@dataclass
class SessionStats:
    connections: int = 0
    reconnects: int = 0
    goaways: int = 0
    fresh_restarts: int = 0
    audio_bytes_sent: int = 0
    audio_bytes_resent: int = 0
    audio_bytes_dropped: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    total_tokens: int = 0
    tool_calls: int = 0
    video_frames_sent: int = 0
    video_bytes_sent: int = 0
    video_tokens_reported: int = 0  # VIDEO/IMAGE prompt tokens in the service's usageMetadata
    # usageMetadata's promptTokensDetails/responseTokensDetails summed: {"AUDIO": n, "TEXT": n, ...}
    input_tokens: dict[str, int] = field(default_factory=dict)
    output_tokens: dict[str, int] = field(default_factory=dict)
    switch_gaps_ms: list[float] = field(default_factory=list)  # each goAway switch: no audio went up


class SessionEnded(Exception):
    """The conversation cannot go on; `reason` is shown to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Session(Protocol):
    stats: SessionStats
    # True when model audio arrives in real time (an echo) rather than in bursts ahead of playout:
    # the playout buffer then makes up lateness in silences instead of waiting for it.
    live_audio: bool

    def send_audio(self, pcm: bytes, arrived_at: float) -> None:
        """Caller PCM, 16 kHz mono s16; never blocks."""

    def send_video(self, jpeg: bytes) -> None:
        """The newest camera or screen still; replaces one not yet sent, never blocks."""

    def end_audio_stream(self) -> None:
        """The caller paused: whatever is buffered goes, and the model may end the turn."""

    def caller_connected(self) -> None:
        """The caller hears the call and gets its events: an agent that speaks first does so now."""

    async def run(self) -> None:
        """Hold the conversation until `close()`; raises SessionEnded when it cannot go on."""

    async def close(self) -> None: ...


SessionFactory = Callable[[SessionListener], Session]
