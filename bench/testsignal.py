"""The benchmark's test signal: speech, then tone-burst markers in silence, over and over; Opus-encoded once.

One cycle: the test sentence (4.9 s), 0.5 s of silence, then MARKERS bursts of 20 ms of 1 kHz, each at the
start of a 500 ms slot of digital silence. Every caller sends the same pre-encoded packets (Opus with
in-band FEC, as a browser sends it), so the load generator spends no CPU encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import opuslib
import opuslib.api.ctl as ctl
import opuslib.api.encoder as opus_encoder

from parley.caller import load_wav

RATE = 48000
FRAME = 960
MARKERS = 6
MARKER_SLOT_FRAMES = 25  # 500 ms
SPEECH_WAV = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech.wav"


@dataclass
class TestSignal:
    pcm48: np.ndarray  # one cycle, 48 kHz
    pcm16: np.ndarray  # the same at 16 kHz, the reference for the SNR
    payloads: list[bytes]  # one Opus packet per 20 ms frame of the cycle
    marker_frames: list[int]  # frame indexes in the cycle where a burst starts
    speech_frames: tuple[int, int]  # [start, end) of the sentence
    speech16: np.ndarray  # the sentence alone, 16 kHz


def make_signal() -> TestSignal:
    speech = load_wav(str(SPEECH_WAV))
    speech = np.concatenate([speech, np.zeros((-speech.size) % FRAME, np.int16)])
    speech_frames = speech.size // FRAME
    gap = np.zeros(FRAME * 25, np.int16)
    t = np.arange(FRAME) / RATE
    burst = (np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16)
    slot = np.concatenate([burst, np.zeros(FRAME * (MARKER_SLOT_FRAMES - 1), np.int16)])
    pcm48 = np.concatenate([speech, gap, *([slot] * MARKERS)])
    first_marker = speech_frames + 25
    markers = [first_marker + i * MARKER_SLOT_FRAMES for i in range(MARKERS)]
    return TestSignal(
        pcm48=pcm48,
        pcm16=downsample16(pcm48),
        payloads=encode(pcm48),
        marker_frames=markers,
        speech_frames=(0, speech_frames),
        speech16=downsample16(speech),
    )


def encode(pcm48: np.ndarray) -> list[bytes]:
    encoder = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    state = encoder.encoder_state
    opus_encoder.encoder_ctl(state, ctl.set_bitrate, 32000)
    opus_encoder.encoder_ctl(state, ctl.set_inband_fec, 1)
    opus_encoder.encoder_ctl(state, ctl.set_packet_loss_perc, 10)
    # Encode two cycles and keep the second, so the loop point has a warmed-up encoder state too.
    frames = np.concatenate([pcm48, pcm48]).reshape(-1, FRAME)
    packets = [encoder.encode(frame.tobytes(), FRAME) for frame in frames]
    return packets[len(packets) // 2 :]


def downsample16(pcm48: np.ndarray) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(pcm48.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)
