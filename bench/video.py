"""Video on top of audio (`make bench`, step "video"): what a camera adds to a call.

The same load of audio calls (bench/loadgen.py) against the same `parley serve --backend loopback`,
with and without a camera on each call, interleaved and repeated: the server's CPU per call-second
(all threads: the video decoder and JPEG encoder run on a worker thread per call), the audio uplink
and downlink latency inside the agent, and the round trip the caller measures.

The camera sends what the join page sends by default (parley/web/client/video.js): 768x432 at 2 fps
(twice PARLEY_VIDEO_FPS=1), VP8 at 300 kbit/s. Its picture moves (a scrolling texture), so the encoder
makes real inter frames, not the near-empty ones of a still colour. The frames are encoded once, before
the calls start, and sent as packets (as PacketMic sends its Opus): ten aiortc VP8 encoders on the load
generator's core stalled its event loop for seconds, which measured the load generator, not the agent.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import av
import numpy as np
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from parley.camera import VIDEO_CLOCK, ColourCamera

# What the page sends by default: PARLEY_VIDEO_MAX_SIDE=768 on the longer side, 2 x PARLEY_VIDEO_FPS.
PAGE_WIDTH, PAGE_HEIGHT, PAGE_FPS = 768, 432, 2.0
SCROLL_PX = 24  # per frame


class MovingCamera(ColourCamera):
    """A textured picture that scrolls sideways: costs the encoder and the decoder what a scene does."""

    def __init__(self, width: int = PAGE_WIDTH, height: int = PAGE_HEIGHT, fps: float = PAGE_FPS) -> None:
        super().__init__("red", width, height, fps)
        rng = np.random.default_rng(7)
        # Smooth blobs with some fine grain: compressible like a camera image, never flat.
        coarse = rng.integers(0, 256, (height // 24 + 1, (2 * width) // 24 + 1, 3), dtype=np.uint8)
        texture = np.kron(coarse, np.ones((24, 24, 1), np.uint8))[:height, : 2 * width]
        grain = rng.integers(0, 24, texture.shape, dtype=np.uint8)
        self._texture = np.ascontiguousarray(texture // 2 + grain + 40)

    def _frame(self) -> av.VideoFrame:
        offset = (self.frames * SCROLL_PX) % self.width
        rgb = np.ascontiguousarray(self._texture[:, offset : offset + self.width])
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


PAGE_BITRATE = 300_000  # the page's camera cap
LOOP_FRAMES = 20  # 10 s of video at 2 fps, then again from its key frame


def encoded_camera(frames: int = LOOP_FRAMES) -> list[bytes]:
    """MovingCamera's pictures as VP8 frames (the first a key frame), encoded the way a browser would."""
    camera = MovingCamera()
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = PAGE_WIDTH, PAGE_HEIGHT, "yuv420p"
    codec.bit_rate = PAGE_BITRATE
    codec.time_base = fractions.Fraction(1, int(PAGE_FPS))
    codec.gop_size = 10_000
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[bytes] = []
    for i in range(frames):
        camera.frames = i
        picture = camera._frame()
        picture.pts = i
        out += [bytes(p) for p in codec.encode(picture)]
    out += [bytes(p) for p in codec.encode(None)]
    return out[:frames]


class PacketCamera(MediaStreamTrack):
    """Pre-encoded VP8 frames at PAGE_FPS on an absolute clock, looping. Frames are shared by all calls.
    A key-frame request (PLI, FIR: the agent asks after a frame it skipped) restarts the loop at its key
    frame, as a browser's encoder would send one at once."""

    kind = "video"
    _frames: list[bytes] | None = None

    def __init__(self) -> None:
        super().__init__()
        if PacketCamera._frames is None:
            PacketCamera._frames = encoded_camera()
        self._start: float | None = None
        self._index = 0
        self._keyframe_at = 0  # the index the loop last (re)started at
        self.keyframes_sent = 0
        self.sent_at: list[tuple[float, str]] = []

    def listen(self, sender: RTCRtpSender) -> None:
        """Hear the sender's key-frame requests (aiortc only forces them on frames it encodes)."""
        requested = sender._send_keyframe

        def send_keyframe() -> None:
            self._keyframe_at = self._index
            requested()

        sender._send_keyframe = send_keyframe  # type: ignore[method-assign]

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        frames = PacketCamera._frames
        assert frames is not None
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._index / PAGE_FPS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        position = (self._index - self._keyframe_at) % len(frames)
        self.keyframes_sent += position == 0
        packet = av.Packet(frames[position])
        packet.pts = int(self._index * VIDEO_CLOCK / PAGE_FPS)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._index += 1
        self.sent_at.append((time.monotonic(), "moving"))
        return packet


Measure = Callable[[Any, list[str]], tuple[dict[str, Any], dict[str, Any]]]
Log = Callable[[str], None]


def video_cost(
    server: Any, measure: Measure, log: Log, counts: list[int], seconds: float, rounds: int
) -> dict[str, Any]:
    """For each number of calls: audio-only and audio+camera runs, interleaved `rounds` times (three
    times as many at 1 call: there the event loop's round-to-round spread, ±5 ms, exceeds the camera's
    share of it, and 1-call rounds are short)."""
    rows: list[dict[str, Any]] = []
    for calls in counts:
        for round_ in range(rounds * 3 if calls == 1 else rounds):
            for video in (False, True):
                args = ["--calls", str(calls), "--seconds", str(seconds), "--warmup", str(3 + calls / 10)]
                result, numbers = measure(server, [*args, "--video"] if video else args)
                rows.append({**numbers, "calls": calls, "video": video, "round": round_, "load": result})
                up, down = numbers.get("uplink", {}), numbers.get("downlink", {})
                log(
                    f"video={video!s:5s} N={calls:2d} cpu={numbers.get('cpu_ms_per_call_s')} ms/call-s"
                    f" uplink p50/p95={up.get('p50')}/{up.get('p95')}"
                    f" downlink p50/p95={down.get('p50')}/{down.get('p95')}"
                    f" rtt p50={result['rtt_ms']['p50']} camera fps={result.get('video_frames_per_s')}"
                    f" JPEGs per call-s={numbers.get('video_frames_per_call_s')}"
                )
    return {"rows": rows, "summary": summarise(rows, counts)}


def summarise(rows: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    def mid(calls: int, video: bool, get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for r in rows if r["calls"] == calls and r["video"] == video if (v := get(r)) is not None]
        return round(median(values), 2) if values else None

    out = []
    for calls in counts:
        row: dict[str, Any] = {"calls": calls}
        for key, get in {
            "cpu_ms_per_call_s": lambda r: r.get("cpu_ms_per_call_s"),
            "uplink_p50_ms": lambda r: r.get("uplink", {}).get("p50"),
            "uplink_p95_ms": lambda r: r.get("uplink", {}).get("p95"),
            "downlink_p50_ms": lambda r: r.get("downlink", {}).get("p50"),
            "downlink_p95_ms": lambda r: r.get("downlink", {}).get("p95"),
            "rtt_p50_ms": lambda r: r["load"]["rtt_ms"]["p50"],
            "rtt_p95_ms": lambda r: r["load"]["rtt_ms"]["p95"],
            "loop_lag_p99_ms": lambda r: r.get("loop_lag", {}).get("p99"),
        }.items():
            audio, video = mid(calls, False, get), mid(calls, True, get)
            row[key] = {"audio": audio, "video": video}
            if audio is not None and video is not None:
                row[key]["added"] = round(video - audio, 2)
        with_video = row["cpu_ms_per_call_s"]["video"]
        row["calls_per_core_with_video"] = round(1000 / with_video, 1) if with_video else None
        row["video_frames_sent_per_call_s"] = mid(calls, True, lambda r: r.get("video_frames_per_call_s"))
        row["real_time"] = all(
            r["load"].get("frames_per_s", {}).get("min", 0) >= 49.0 for r in rows if r["calls"] == calls
        )
        out.append(row)
    return out


def video_table(summary: list[dict[str, Any]]) -> list[str]:
    def cell(d: dict[str, Any]) -> str:
        audio, video, added = (d.get(k) for k in ("audio", "video", "added"))
        shown = ["-" if v is None else f"{v:.2f}" for v in (audio, video)]
        return " / ".join([*shown, "-" if added is None else f"{added:+.2f}"])

    out = [
        "| calls | CPU ms per call-s | uplink p50 ms | uplink p95 ms | downlink p50 ms | downlink p95 ms "
        "| round trip p50 ms | loop lag p99 ms | JPEGs to Gemini per call-s | calls per core, video on |",
        "|---:|---|---|---|---|---|---|---|---:|---:|",
    ]
    for r in summary:
        out.append(
            f"| {r['calls']} | {cell(r['cpu_ms_per_call_s'])} | {cell(r['uplink_p50_ms'])} "
            f"| {cell(r['uplink_p95_ms'])} | {cell(r['downlink_p50_ms'])} | {cell(r['downlink_p95_ms'])} "
            f"| {cell(r['rtt_p50_ms'])} | {cell(r['loop_lag_p99_ms'])} "
            f"| {r['video_frames_sent_per_call_s'] or '-'} | {r['calls_per_core_with_video'] or '-'} |"
        )
    return [*out, "", "Each cell: audio only / audio + camera / added by the camera (medians of the rounds)."]
