"""What the session must know about the Live model families, and how to read the way a connection ended.

The 3.x Live models (gemini-3.1-flash-live-preview, gemini-3.8-live) take history only as initial
`clientContent` under `historyConfig`, refuse a resume while the handle's connection is still open, need
real (non-zero) trailing audio to end a turn, call functions NON_BLOCKING and refuse some setup knobs.
docs/gemini-3x-rules.md lists each rule, where it was reported, and the emulator option that shows it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from google.genai import errors
from websockets.exceptions import ConnectionClosed

FAMILIES = ("2.5", "3.x")

# Peak of the comfort noise sent in place of digital zeros: about -84 dBFS RMS, far under any speech
# threshold (the local VAD's and the model's), but not zero.
COMFORT_NOISE_PEAK = 3

# Words in a 1007 reason that say the request itself was refused, not that the context is full.
_REFUSAL_WORDS = (
    "invalid json",
    "unknown name",
    "cannot find field",
    "not supported",
    "cannot be disabled",
    "only accepted",
    "invalid value",
    "api key",
)


def family_of(model: str, override: str | None = None) -> str:
    """ "gemini-3.8-live" and "models/gemini-3.1-flash-live-preview" are 3.x; the rest 2.5."""
    if override:
        if override not in FAMILIES:
            raise ValueError(f"unknown Live model family {override!r}: expected one of {', '.join(FAMILIES)}")
        return override
    return "3.x" if model.rsplit("/", 1)[-1].startswith("gemini-3") else "2.5"


@dataclass(frozen=True)
class Closed:
    """How a Live connection ended, whichever side (send or receive) noticed it."""

    code: int | None
    reason: str

    @property
    def context_full(self) -> bool:
        """A 1007 that is not a refused field or message: the context window has no room."""
        if self.code != 1007:
            return False
        reason = self.reason.lower()
        return not any(word in reason for word in _REFUSAL_WORDS)

    @property
    def refused_request(self) -> bool:
        return self.code == 1007 and not self.context_full

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}" if self.code is not None else self.reason


def closed(exc: BaseException) -> Closed:
    """The SDK raises APIError from receive() but a bare websockets ConnectionClosed from a send."""
    if isinstance(exc, errors.APIError):
        # Close reasons arrive as the error's details (a string); JSON errors carry a message.
        details = exc.details if isinstance(exc.details, str) else None
        return Closed(exc.code, exc.message or details or str(exc))
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is None:
            return Closed(1006, "the connection dropped without a close frame")
        return Closed(frame.code, frame.reason or "")
    return Closed(None, str(exc) or type(exc).__name__)


@functools.cache
def _noise_pcm(samples: int) -> bytes:
    """The noise itself, made once per process: every call's outbox reads the same bytes (making them
    cost ~0.35 ms of each call's set-up)."""
    rng = np.random.default_rng(20261203)
    noise = rng.integers(-COMFORT_NOISE_PEAK, COMFORT_NOISE_PEAK + 1, samples, dtype=np.int16)
    noise[noise == 0] = 1  # not a single zero sample
    return noise.astype("<i2").tobytes()


class ComfortNoise:
    """Low-level noise in place of exact digital zeros (a muted mic, silence that decodes to zeros):
    the 3.8 models do not end a turn on zeros, only on real, however quiet, audio."""

    def __init__(self, seconds: float = 1.0, rate: int = 16000) -> None:
        self._pcm = _noise_pcm(int(seconds * rate))
        self._offset = 0

    def take(self, nbytes: int) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            piece = self._pcm[self._offset : self._offset + nbytes - len(out)]
            out += piece
            self._offset = (self._offset + len(piece)) % len(self._pcm)
        return bytes(out)

    def unzero(self, chunk: bytes) -> bytes:
        """`chunk` itself, or noise of its length when it is nothing but zeros."""
        return chunk if any(chunk) else self.take(len(chunk))
