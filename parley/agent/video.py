"""The caller's camera or screen as JPEG stills for Gemini: decoded little, sampled fresh, never in the way.

    caller RTP -> VideoTap (whole frames, decode budget) -> one worker thread per call (decode)
               -> VideoSampler (newest fresh frame, PARLEY_VIDEO_FPS) -> worker (scale, JPEG) -> send

The tap stands where aiortc's video jitter buffer would (as `OpusUplink` does for audio), so aiortc's
own decoder thread never runs. Everything that costs CPU (decoding, scaling, JPEG encoding) runs on the
call's single worker thread: the event loop only moves packets and references, so a slow or stalled
decoder delays video and nothing else. A frame is sent only if its capture time, judged by its RTP
timestamp against the arrival clock (videoframes.FrameClock), is within one sampling interval: the
stale frame a paused sender leaves behind is never sent as if it were new.

The door into the call is `VideoPath`: `attach(transceiver)`, `activity(speaking)`, `close()`, `stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from parley.agent.videoframes import EncodedFrame, FrameAssembler

logger = logging.getLogger(__name__)

JPEG_MIME = "image/jpeg"
# Input tokens per frame, by mediaResolution, as the service counts them (HIGH is 256, zoomed).
TOKENS_PER_FRAME = {"LOW": 64, "MEDIUM": 256, "HIGH": 256}
DEFAULT_TOKENS_PER_FRAME = 256
MAX_IN_FLIGHT = 2  # encoded frames handed to the worker and not yet decoded
KEYFRAME_REQUEST_INTERVAL_S = 0.5
# Full-range luma at or below this everywhere is a black frame: a track with enabled=false.
BLACK_LUMA = 24


@dataclass
class VideoOptions:
    enabled: bool = True  # False: an offer's video is answered inactive (an agent profile's `video`)
    fps: float = 1.0  # frames sent per second while someone speaks (PARLEY_VIDEO_FPS)
    idle_fps: float = 0.5  # ...and while nobody does (PARLEY_VIDEO_IDLE_FPS)
    idle_after_s: float = 2.0  # speech this long ago still counts as speaking
    max_side: int = 768  # PARLEY_VIDEO_MAX_SIDE: the longer side of a JPEG, in pixels
    media_resolution: str | None = None  # LOW, MEDIUM or HIGH (PARLEY_VIDEO_MEDIA_RESOLUTION)
    jpeg_qscale: int = 4  # 2 (best) .. 31; 4 keeps screen text sharp at ~40-90 kB per 768 px frame
    # A caller sending more than this is decoded from key frames only (asked for when needed).
    max_decode_fps: float = 30.0
    max_decode_cpu: float = 0.1  # share of one core a call's decoding may use

    @property
    def tokens_per_frame(self) -> int:
        return TOKENS_PER_FRAME.get((self.media_resolution or "").upper(), DEFAULT_TOKENS_PER_FRAME)


@dataclass
class VideoStats:
    frames_received: int = 0  # whole encoded frames assembled
    frames_decoded: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # encoded frames not decoded, by reason
    keyframe_requests: int = 0
    frames_sent: int = 0
    jpeg_bytes_sent: int = 0
    seconds: float = 0.0  # call time during which fresh video was being sent
    stale_skipped: int = 0  # samples with no frame younger than one interval
    black_skipped: int = 0
    decode_cpu_s: float = 0.0
    encode_s: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    last_packet_at: float = 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass
class DecodedFrame:
    image: av.VideoFrame
    timestamp: int
    captured_at: float


@dataclass
class JpegImage:
    data: bytes
    width: int
    height: int
    black: bool


_Decoded = tuple[list[av.VideoFrame], float]  # the images of one frame, and the CPU seconds it took


class _Bucket:
    """A token bucket: `rate` per second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.level = rate, burst, burst
        self._at = time.monotonic()

    def refill(self, now: float) -> float:
        self.level = min(self.burst, self.level + (now - self._at) * self.rate)
        self._at = now
        return self.level


class VideoTap:
    """Stands in for the video receiver's jitter buffer: assembles frames and decides which to decode."""

    def __init__(
        self,
        codecs: dict[int, str],
        options: VideoOptions,
        worker: ThreadPoolExecutor,
        stats: VideoStats,
        on_decoded: Callable[[DecodedFrame], None],
    ) -> None:
        self._assembler = FrameAssembler(codecs)
        self._worker = worker
        self._stats = stats
        self._on_decoded = on_decoded
        self._loop = asyncio.get_running_loop()
        self._need_keyframe = True
        self._last_request = -1.0
        self._in_flight = 0
        self._frames = _Bucket(options.max_decode_fps, max(1.0, options.max_decode_fps))
        self._cpu = _Bucket(options.max_decode_cpu, max(0.05, options.max_decode_cpu))
        self._decoders: dict[str, Any] = {}  # touched only on the worker thread
        self.closed = False

    # aiortc's receiver calls add(packet) -> (send_pli, frame_for_its_decoder); it never gets a frame.
    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        now = time.monotonic()
        self._stats.last_packet_at = now
        frame = self._assembler.add(packet, now)
        if frame is None or self.closed:
            return False, None
        self._stats.frames_received += 1
        return self._schedule(frame, now), None

    def remove(self, count: int) -> None:  # part of the JitterBuffer interface aiortc may call
        pass

    def _schedule(self, frame: EncodedFrame, now: float) -> bool:
        if not frame.keyframe and (self._need_keyframe or not frame.continuous):
            return self._skip("waiting_keyframe" if self._need_keyframe else "gap", now)
        if self._in_flight >= MAX_IN_FLIGHT:
            return self._skip("busy", now)
        if self._frames.refill(now) < 1 or self._cpu.refill(now) <= 0:
            return self._skip("budget", now)
        self._frames.level -= 1
        self._need_keyframe = False
        self._in_flight += 1
        future = self._loop.run_in_executor(self._worker, self._decode, frame)
        future.add_done_callback(lambda f: self._decoded(frame, f))
        return False

    def _skip(self, reason: str, now: float) -> bool:
        """Drop a frame; what follows it cannot be decoded until a key frame, so ask for one."""
        self._stats.drop(reason)
        self._need_keyframe = True
        if now - self._last_request < KEYFRAME_REQUEST_INTERVAL_S:
            return False
        self._last_request = now
        self._stats.keyframe_requests += 1
        return True

    def _decode(self, frame: EncodedFrame) -> _Decoded:
        started = time.thread_time()
        decoder = self._decoders.get(frame.codec)
        if decoder is None:
            decoder = av.CodecContext.create("vp8" if frame.codec == "VP8" else "h264", "r")
            decoder.thread_count = 1  # one core at most, whatever the frame size
            self._decoders[frame.codec] = decoder
        images = list(decoder.decode(av.Packet(frame.data)))
        return images, time.thread_time() - started

    def _decoded(self, frame: EncodedFrame, future: asyncio.Future[_Decoded]) -> None:
        self._in_flight -= 1
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._stats.drop("decode_error")
            self._need_keyframe = True
            return
        images, cpu_s = future.result()
        self._stats.decode_cpu_s += cpu_s
        self._cpu.level -= cpu_s
        for image in images[-1:]:
            self._stats.frames_decoded += 1
            if not self.closed:
                self._on_decoded(DecodedFrame(image, frame.timestamp, frame.captured_at))


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Fit within max_side on the longer side, keeping the aspect ratio; even sizes for 4:2:0."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class JpegEncoder:
    """Scales and JPEG-encodes frames, on the call's worker thread only. One MJPEG encoder stays open per
    size: a JPEG holds nothing of the frame before it, and opening an encoder for each frame cost a
    tenth of the encoding (0.2 of ~1.8 ms at 768x432)."""

    def __init__(self, max_side: int, qscale: int) -> None:
        self.max_side, self.qscale = max_side, qscale
        self._encoder: Any = None
        self._size = (0, 0)

    def encode(self, image: av.VideoFrame) -> JpegImage:
        width, height = scaled_size(image.width, image.height, self.max_side)
        small = image.reformat(width=width, height=height, format="yuvj420p", interpolation="AREA")
        small.pts = None  # the encoder is fed frames out of any time base of its own
        plane = small.planes[0]
        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(height, plane.line_size)[::4, :width:4]
        if self._encoder is None or self._size != (width, height):
            self._encoder, self._size = self._open(width, height), (width, height)
        data = b"".join(bytes(p) for p in self._encoder.encode(small))
        if not data:  # an encoder that held the frame back: flush it, open a new one next time
            data = b"".join(bytes(p) for p in self._encoder.encode(None))
            self._encoder = None
        return JpegImage(data, width, height, black=int(luma.max()) <= BLACK_LUMA)

    def _open(self, width: int, height: int) -> Any:
        encoder = av.CodecContext.create("mjpeg", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
        encoder.time_base = fractions.Fraction(1, 1)
        encoder.thread_count = 1
        encoder.options = {"qmin": str(self.qscale), "qmax": str(self.qscale)}
        return encoder


class VideoPath:
    """One call's video: the tap on the current connection, the sampler, the worker thread."""

    def __init__(
        self,
        options: VideoOptions,
        send: Callable[[bytes], None],
        emit: Callable[..., None],
        name: str = "video",
    ) -> None:
        self.options = options
        self.stats = VideoStats()
        self._send = send
        self._emit = emit
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._jpeg = JpegEncoder(options.max_side, options.jpeg_qscale)  # used on the worker only
        self._tap: VideoTap | None = None
        self._newest: DecodedFrame | None = None
        self._last_sent_ts: int | None = None
        self._last_sent_at = -1e9
        self._speech_at = -1e9
        self._wake = asyncio.Event()
        self.state = "none"  # none (no video yet), active, paused, muted, ended
        self._tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._run(), name=f"{name}-sampler")]

    def attach(self, transceiver: RTCRtpTransceiver) -> None:
        """Take the video of a (new) connection; the sampler and the newest frame carry over."""
        codecs = {
            c.payloadType: c.name for c in getattr(transceiver, "_codecs", []) if c.name in ("VP8", "H264")
        }
        if self._tap is not None:
            self._tap.closed = True
        self._tap = VideoTap(codecs, self.options, self._worker, self.stats, self._on_decoded)
        receiver = transceiver.receiver
        attribute = "_RTCRtpReceiver__jitter_buffer"
        if not hasattr(receiver, attribute):
            raise RuntimeError("this aiortc version has no receiver jitter buffer to replace")
        setattr(receiver, attribute, self._tap)
        self._tasks.append(asyncio.create_task(self._watch_end(transceiver, self._tap)))

    def activity(self) -> None:
        """Someone (the user or the agent) speaks: sample at the full rate, starting now."""
        now = time.monotonic()
        was_idle = now - self._speech_at > self.options.idle_after_s
        self._speech_at = now
        if was_idle:
            self._wake.set()

    async def close(self) -> None:
        if self._tap is not None:
            self._tap.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def summary(self) -> dict[str, Any]:
        s = self.stats
        encode = sorted(s.encode_s)
        return {
            "state": self.state,
            "frames_sent": s.frames_sent,
            "seconds": round(s.seconds, 2),
            "input_tokens": s.frames_sent * self.options.tokens_per_frame,
            "jpeg_kb_sent": round(s.jpeg_bytes_sent / 1000, 1),
            "frames_received": s.frames_received,
            "frames_decoded": s.frames_decoded,
            "dropped": dict(s.dropped),
            "keyframe_requests": s.keyframe_requests,
            "stale_skipped": s.stale_skipped,
            "black_skipped": s.black_skipped,
            "decode_cpu_ms": round(s.decode_cpu_s * 1000, 1),
            "encode_ms_p50": round(encode[len(encode) // 2] * 1000, 2) if encode else None,
        }

    def counters(self) -> dict[str, float]:
        """Running totals for the process's counters (parley/agent/metrics.py sums them over calls)."""
        s = self.stats
        return {
            "video_frames": s.frames_sent,
            "video_s": s.seconds,
            "video_tokens": s.frames_sent * self.options.tokens_per_frame,
            "video_bytes": s.jpeg_bytes_sent,
            "video_dropped": sum(s.dropped.values()),
        }

    # --- the sampler --------------------------------------------------------------------------

    def _on_decoded(self, frame: DecodedFrame) -> None:
        self._newest = frame
        if self.state != "active" and time.monotonic() - self._last_sent_at >= self._min_gap:
            self._wake.set()  # video came back: show it now, not at the next tick

    @property
    def _min_gap(self) -> float:
        return 1.0 / self.options.fps

    def _interval(self, now: float) -> float:
        speaking = now - self._speech_at <= self.options.idle_after_s
        return 1.0 / (self.options.fps if speaking else min(self.options.fps, self.options.idle_fps))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_tick = time.monotonic()
        while True:
            delay = last_tick + self._interval(time.monotonic()) - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            now = time.monotonic()
            if now - self._last_sent_at < self._min_gap:  # woken early: keep to the set rate
                await asyncio.sleep(self._last_sent_at + self._min_gap - now)
                now = time.monotonic()
            if self.state == "active":
                self.stats.seconds += min(now - last_tick, 1.0 / max(self.options.idle_fps, 1e-3))
            last_tick = now
            await self._sample(loop, now)

    async def _sample(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        frame = self._newest
        if self.state == "ended":
            return
        if frame is None or now - frame.captured_at > self._min_gap:
            if frame is not None:
                self.stats.stale_skipped += 1
            self._set_state("paused" if frame is not None else self.state)
            return
        if frame.timestamp == self._last_sent_ts:
            return  # nothing new since the last send
        started = time.monotonic()
        image = await loop.run_in_executor(self._worker, self._jpeg.encode, frame.image)
        self.stats.encode_s.append(time.monotonic() - started)
        self._last_sent_ts = frame.timestamp
        if image.black:
            self.stats.black_skipped += 1
            self._set_state("muted")
            return
        self._send(image.data)
        self._last_sent_at = time.monotonic()
        self.stats.frames_sent += 1
        self.stats.jpeg_bytes_sent += len(image.data)
        self._set_state("active", width=image.width, height=image.height)

    def _set_state(self, state: str, **detail: Any) -> None:
        if state != self.state:
            self.state = state
            self._emit("video", state=state, **detail)

    async def _watch_end(self, transceiver: RTCRtpTransceiver, tap: VideoTap) -> None:
        # The remote track gets no frames (the tap keeps them): recv() returns only when it ends.
        with contextlib.suppress(MediaStreamError):
            while True:
                await transceiver.receiver.track.recv()
        if tap is self._tap:
            self._set_state("ended")
