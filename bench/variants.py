"""Parley with one optimisation undone, for before/after numbers in the same run.

    python -m bench.variants NAME [parley arguments...]

- `aiortc-encoder`: the track hands aiortc 48 kHz mono frames, as before: its encoder upmixes them to
  stereo and encodes each 20 ms in the thread pool, and the sender computes each frame's audio level in
  pure Python (`aiortc.rtp.compute_audio_level_dbov`).
- `aiortc-encoder-numpy-level`: the same, with the audio level computed with numpy.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from aiortc import rtp
from av import AudioFrame

import parley.agent.call
from parley import cli


def numpy_audio_level_dbov(frame: AudioFrame) -> int:
    """RFC 6465 Appendix A, like aiortc's, over the frame's samples only."""
    count = frame.samples * len(frame.layout.channels)
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16, count=count).astype(np.float64)
    rms = math.sqrt(float(np.dot(samples, samples)) / (frame.samples * 32767 * 32767))
    return round(max(-127.0, min(0.0, 20 * math.log10(rms)))) if rms > 0 else -127


def no_encoder() -> None:
    return None


VARIANTS = ("aiortc-encoder", "aiortc-encoder-numpy-level")


def main() -> None:
    name = sys.argv[1]
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: {', '.join(VARIANTS)}")
    parley.agent.call.MonoOpusEncoder = no_encoder  # type: ignore[misc,assignment]
    if name.endswith("numpy-level"):
        rtp.compute_audio_level_dbov = numpy_audio_level_dbov
    cli.main(sys.argv[2:])


if __name__ == "__main__":
    main()
