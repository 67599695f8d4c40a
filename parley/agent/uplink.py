"""Uplink: the caller's Opus RTP packets, decoded to 16 kHz mono PCM16 the moment they arrive.

aiortc's own audio path holds packets in an 80 ms jitter buffer that ratchets up after a loss, hands them
to a decoder thread that makes 48 kHz stereo, and has no loss concealment. Gemini takes 16 kHz mono and
does its own buffering, so none of that is wanted here. `OpusUplink` takes the jitter buffer's place in
the receiver (`tap_receiver`): each in-order packet is decoded on the event loop as it arrives, a late
packet is dropped, and a gap is filled with Opus packet loss concealment, its last frame recovered from
the next packet's in-band FEC when the sender put it there.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import opuslib
import opuslib.api.decoder
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Gaps longer than this are a paused sender, not a loss: concealing them would only invent sound.
MAX_CONCEALED_FRAMES = 5

# A network that held packets back may deliver a second of them at once; more than that, sustained,
# is a flood.
FLOOD_BURST_S = 1.0
FLOOD_RATE = 1.5
# A jump of the RTP clock beyond this is a new stream (a restarted sender), not time that passed.
MAX_RTP_STEP = 48000 * 10

PcmSink = Callable[[bytes, float], None]


class OpusDecoder(opuslib.Decoder):
    """opuslib's decoder, decoding into one buffer of its own: opuslib's `decode` makes a ctypes array per
    frame (twice the size needed), a reference cycle with its `cast` (garbage only the cyclic collector
    frees: two objects per frame, ~900 a second per 20-call process) and a list of Python ints to copy
    it out. This way a frame costs about half (docs/benchmarks.md, "What the server's loop still paid for
    at 40 calls")."""

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        super().__init__(sample_rate, channels)
        self._max_samples = sample_rate * 120 // 1000  # Opus packets carry at most 120 ms
        self._pcm = (ctypes.c_int16 * (self._max_samples * channels))()

    def decode(self, payload: bytes, frame_samples: int, decode_fec: bool = False) -> bytes:
        samples = opuslib.api.decoder.libopus_decode(
            self.decoder_state,
            payload,
            len(payload),
            self._pcm,
            min(frame_samples, self._max_samples),
            int(decode_fec),
        )
        if samples < 0:
            raise opuslib.OpusError(samples)
        return ctypes.string_at(self._pcm, samples * 2 * self._channels)


@dataclass
class UplinkStats:
    packets: int = 0
    late: int = 0
    concealed: int = 0
    recovered: int = 0
    decode_errors: int = 0
    flood_dropped: int = 0
    last_packet_at: float = 0.0
    # How far the sender's RTP clock (48 kHz for Opus) moved over the packets taken: the stream's length
    # in time, which packet counts are not when the sender uses DTX (a packet every 400 ms in silence).
    rtp_span: int = 0


class OpusUplink:
    """Stands in for aiortc's JitterBuffer: `add` decodes and hands PCM on, and never returns a frame."""

    def __init__(self, sink: PcmSink, sample_rate: int = SAMPLE_RATE, flood_guard: bool = False) -> None:
        self._sink = sink
        self._rate = sample_rate
        self._decoder = OpusDecoder(sample_rate)
        self._expected_seq: int | None = None
        self._last_timestamp: int | None = None
        self._frame_samples = sample_rate // 50
        self._max_frame_samples = sample_rate * 120 // 1000
        self._flood_guard = flood_guard
        self._budget_s = FLOOD_BURST_S
        self._budget_at = time.monotonic()
        self.stats = UplinkStats()

    # aiortc's receiver calls add(packet) -> (pli_flag, encoded_frame); returning no frame keeps its
    # decoder thread idle.
    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        arrival = time.monotonic()
        self.stats.last_packet_at = arrival
        payload: bytes = getattr(packet, "_data", packet.payload)
        seq = packet.sequence_number
        if self._expected_seq is not None:
            ahead = (seq - self._expected_seq) & 0xFFFF
            if ahead >= 0x8000:  # behind what was already decoded: a duplicate or a late packet
                self.stats.late += 1
                return False, None
            if ahead:
                self._fill_gap(ahead, payload, arrival)
        self._expected_seq = (seq + 1) & 0xFFFF
        if self._last_timestamp is not None:
            step = (packet.timestamp - self._last_timestamp) & 0xFFFFFFFF
            if step < MAX_RTP_STEP:
                self.stats.rtp_span += step
        self._last_timestamp = packet.timestamp
        self.stats.packets += 1
        if payload and (not self._flood_guard or self._within_budget(payload, arrival)):
            self._decode(payload, arrival)
        return False, None

    def _within_budget(self, payload: bytes, now: float) -> bool:
        """A peer sending audio much faster than real time is throttled: decoding and Gemini get at
        most FLOOD_RATE seconds of audio per second (after a FLOOD_BURST), the rest is dropped."""
        self._budget_s = min(FLOOD_BURST_S, self._budget_s + (now - self._budget_at) * FLOOD_RATE)
        self._budget_at = now
        cost = opus_packet_samples(payload, self._rate) / self._rate
        if cost > self._budget_s:
            self.stats.flood_dropped += 1
            return False
        self._budget_s -= cost
        return True

    def remove(self, count: int) -> None:  # part of the JitterBuffer interface aiortc may call
        pass

    def _fill_gap(self, lost: int, next_payload: bytes, arrival: float) -> None:
        if lost > MAX_CONCEALED_FRAMES:
            self._decoder.reset_state()
            return
        n = self._frame_samples
        for _ in range(lost - 1):
            self._emit(self._decoder.decode(b"", n), arrival)
            self.stats.concealed += 1
        if next_payload:
            # The next packet may carry the last lost frame at lower quality (in-band FEC); libopus
            # falls back to concealment by itself when it does not.
            self._emit(self._safe_decode(next_payload, n, fec=True), arrival)
            self.stats.recovered += 1
        else:
            self._emit(self._decoder.decode(b"", n), arrival)
            self.stats.concealed += 1

    def _decode(self, payload: bytes, arrival: float) -> None:
        samples = opus_packet_samples(payload, self._rate)
        if not 0 < samples <= self._max_frame_samples:
            self.stats.decode_errors += 1
            self._emit(self._decoder.decode(b"", self._frame_samples), arrival)
            return
        self._frame_samples = samples
        self._emit(self._safe_decode(payload, samples, fec=False), arrival)

    def _safe_decode(self, payload: bytes, samples: int, fec: bool) -> bytes:
        try:
            return self._decoder.decode(payload, samples, decode_fec=fec)
        except opuslib.OpusError:
            self.stats.decode_errors += 1
            return self._decoder.decode(b"", samples)

    def _emit(self, pcm: bytes, arrival: float) -> None:
        self._sink(pcm, arrival)


def opus_packet_samples(payload: bytes, rate: int) -> int:
    """Samples per channel in an Opus packet, from its TOC byte (RFC 6716 section 3.1).

    opuslib 3.0.1's packet_get_samples_per_frame returns nonsense, so this reads the header itself.
    """
    toc = payload[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        tenths_ms = (100, 200, 400, 600)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        tenths_ms = (100, 200)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        tenths_ms = (25, 50, 100, 200)[config % 4]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = payload[1] & 0x3F if len(payload) > 1 else 0
    return frames * rate * tenths_ms // 10000


def tap_receiver(receiver: RTCRtpReceiver, uplink: OpusUplink) -> None:
    """Put `uplink` where the receiver keeps its jitter buffer (aiortc 1.16's private attribute)."""
    attribute = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, attribute):
        raise RuntimeError("this aiortc version has no receiver jitter buffer to replace; pin aiortc==1.16.0")
    setattr(receiver, attribute, uplink)
