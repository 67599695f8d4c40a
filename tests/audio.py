"""Audio measurements shared by the tests."""

from __future__ import annotations

import numpy as np


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = reference - test.astype(np.float64)
    return float(10 * np.log10((np.sum(reference**2) + 1e-9) / (np.sum(noise**2) + 1e-9)))


def best_alignment(reference: np.ndarray, received: np.ndarray) -> tuple[int, float]:
    """Where `reference` sits in `received` and how well it matches (normalised cross-correlation, 0..1)."""
    ref = reference.astype(np.float64)
    rec = received.astype(np.float64)
    if rec.size < ref.size:
        rec = np.concatenate([rec, np.zeros(ref.size - rec.size)])
    n = 1 << int(np.ceil(np.log2(rec.size + ref.size)))
    corr = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)[: rec.size - ref.size + 1]
    lag = int(np.argmax(corr))
    window = rec[lag : lag + ref.size]
    denom = np.sqrt(np.sum(ref**2) * np.sum(window**2)) + 1e-9
    return lag, float(corr[lag] / denom)


def envelope(samples: np.ndarray, rate: int, window_ms: int = 20) -> np.ndarray:
    """RMS per window, in dBFS."""
    n = rate * window_ms // 1000
    frames = samples[: samples.size // n * n].astype(np.float64).reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.asarray(20 * np.log10(np.maximum(rms, 1e-3) / 32768))
