"""Whole encoded video frames from the caller's RTP packets, released the moment they are complete.

aiortc's video jitter buffer releases a frame only when the first packet of the *next* frame arrives.
At the low frame rates Parley asks for that holds every frame back one frame time (a whole second at
1 fps), and after a pause it releases the last frame from before the pause, seconds old, as if it were
new. `FrameAssembler` releases a frame when its marker packet and every packet before it are in, and
stamps it with when its packets arrived and when, by its RTP timestamp, it was captured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket

VIDEO_CLOCK = 90000
# Bounds on what one caller can make the assembler hold.
MAX_PENDING_FRAMES = 4
MAX_FRAME_PACKETS = 1200  # ~1.4 MB: far above any frame at the resolutions Parley asks for
ANNEX_B_START = b"\x00\x00\x00\x01"


@dataclass
class EncodedFrame:
    data: bytes
    codec: str  # "VP8" or "H264"
    timestamp: int  # unwrapped RTP timestamp, 90 kHz
    keyframe: bool
    # Follows the last frame released without a gap: decodable on top of the decoder's state.
    continuous: bool
    arrived_at: float  # monotonic time its last packet arrived
    captured_at: float  # monotonic time it was captured, by its RTP timestamp (see FrameClock)


@dataclass
class _Pending:
    packets: dict[int, RtpPacket] = field(default_factory=dict)  # by unwrapped sequence number
    start_seq: int | None = None
    end_seq: int | None = None
    last_arrival: float = 0.0
    codec: str = ""


class _Unwrapper:
    """Sequence numbers and timestamps that wrap (16/32 bits) as ever-growing integers."""

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._last: int | None = None

    def __call__(self, value: int) -> int:
        if self._last is None:
            self._last = value + self._mod  # room to step back before the first value
            return self._last
        delta = (value - self._last) % self._mod
        if delta >= self._mod // 2:
            delta -= self._mod
        unwrapped = self._last + delta
        self._last = max(self._last, unwrapped)
        return unwrapped


class FrameClock:
    """Maps RTP timestamps to the local monotonic clock.

    The offset is the smallest (arrival - RTP time) seen: the frame that came through fastest. A frame's
    capture time is its RTP time plus that offset, so a frame held back anywhere (the network, a
    paused sender, a buffer) shows its real age.
    """

    def __init__(self) -> None:
        self._offset: float | None = None

    def captured_at(self, timestamp: int, arrived_at: float) -> float:
        rtp_s = timestamp / VIDEO_CLOCK
        offset = arrived_at - rtp_s
        if self._offset is None or offset < self._offset:
            self._offset = offset
        return min(arrived_at, rtp_s + self._offset)


class FrameAssembler:
    """Packets in (any order), whole frames out. `codecs` maps payload type to codec name."""

    def __init__(self, codecs: dict[int, str]) -> None:
        self._codecs = codecs
        self._seq = _Unwrapper(16)
        self._ts = _Unwrapper(32)
        self._pending: dict[int, _Pending] = {}
        self._last_end_seq: int | None = None
        self._last_timestamp: int | None = None
        self.clock = FrameClock()
        self.late_packets = 0
        self.lost_frames = 0
        self.oversized_frames = 0

    def add(self, packet: RtpPacket, now: float) -> EncodedFrame | None:
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            return None
        seq = self._seq(packet.sequence_number)
        ts = self._ts(packet.timestamp)
        if self._last_timestamp is not None and ts <= self._last_timestamp:
            self.late_packets += 1  # its frame was released (or given up on) already
            return None
        pending = self._pending.get(ts)
        if pending is None:
            if len(self._pending) >= MAX_PENDING_FRAMES:
                self._give_up(min(self._pending))
            pending = self._pending[ts] = _Pending(codec=codec)
        if len(pending.packets) >= MAX_FRAME_PACKETS:
            self.oversized_frames += 1
            self._give_up(ts)
            return None
        pending.packets[seq] = packet
        pending.last_arrival = now
        if is_frame_start(codec, packet.payload):
            # A frame of several slices has several starts: the first one counts.
            pending.start_seq = seq if pending.start_seq is None else min(pending.start_seq, seq)
        if packet.marker:
            pending.end_seq = seq
        return self._release(ts, pending)

    def _release(self, ts: int, pending: _Pending) -> EncodedFrame | None:
        start, end = pending.start_seq, pending.end_seq
        if start is None or end is None or end < start or len(pending.packets) < end - start + 1:
            return None
        if any(s not in pending.packets for s in range(start, end + 1)):
            return None
        packets = [pending.packets[s] for s in range(start, end + 1)]
        data = b"".join(getattr(p, "_data", b"") for p in packets)
        continuous = self._last_end_seq is not None and start == self._last_end_seq + 1
        # Older frames still incomplete are lost: their packets would never be decodable now.
        for older in [t for t in self._pending if t < ts]:
            self._give_up(older)
        del self._pending[ts]
        self._last_end_seq = end
        self._last_timestamp = ts
        return EncodedFrame(
            data=data,
            codec=pending.codec,
            timestamp=ts,
            keyframe=is_keyframe(pending.codec, data),
            continuous=continuous,
            arrived_at=pending.last_arrival,
            captured_at=self.clock.captured_at(ts, pending.last_arrival),
        )

    def _give_up(self, ts: int) -> None:
        self._pending.pop(ts, None)
        self.lost_frames += 1
        if self._last_timestamp is None or ts > self._last_timestamp:
            self._last_timestamp = ts
        self._last_end_seq = None  # whatever comes next does not follow on without a gap


def is_frame_start(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload (as sent, before depayloading) begins a frame."""
    if not payload:
        return False
    if codec == "VP8":
        try:
            descriptor, _ = VpxPayloadDescriptor.parse(payload)
        except ValueError:
            return False
        return bool(descriptor.partition_start) and descriptor.partition_id == 0
    if codec == "H264":
        nal_type = payload[0] & 0x1F
        if nal_type == 28:  # FU-A: the fragment that carries the start bit
            return len(payload) > 1 and bool(payload[1] & 0x80)
        return 1 <= nal_type <= 24  # a single NAL unit or an aggregate (STAP-A)
    return False


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether a depayloaded frame decodes on its own (VP8 key frame, H.264 IDR or parameter sets)."""
    if not data:
        return False
    if codec == "VP8":
        return data[0] & 0x01 == 0  # the frame tag's P bit: 0 is a key frame
    if codec == "H264":
        at = data.find(ANNEX_B_START)
        while at != -1 and at + 4 < len(data):
            if data[at + 4] & 0x1F in (5, 7):
                return True
            at = data.find(ANNEX_B_START, at + 4)
    return False
