"""The baseline: an echo server built the plain aiortc way, with Parley's HTTP API.

aiortc's default receiver (its jitter buffer and decoder thread), `track.recv()` frames resampled frame
by frame to what a voice agent works in (16 kHz mono up, 24 kHz down, like the loopback backend), then
up to 48 kHz into a simple paced track and aiortc's own encoder path (stereo Opus in the thread pool,
the audio level in Python). The same timings as Parley's are taken and served on /metrics, with the
same metric names, so the benchmark reads both the same way.

    python -m bench.baseline_server --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import time
import uuid
from collections import deque

import aiortc.rtcrtpreceiver
import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from parley.agent.ice import offer_host_addresses, rtc_configuration
from parley.agent.metrics import Metrics

RATE = 48000
FRAME = 960
TIME_BASE = fractions.Fraction(1, RATE)

# frame pts -> when its packet arrived, per receiver: only to measure the uplink, never to steer it.
_arrivals: dict[int, dict[int, float]] = {}


class TimedJitterBuffer(JitterBuffer):
    """aiortc's own jitter buffer, unchanged, noting when each packet arrived."""

    first_timestamp: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self.first_timestamp is None:
            self.first_timestamp = packet.timestamp
        # decoded frames carry the RTP timestamp less the first one as their pts
        pts = (packet.timestamp - self.first_timestamp) & 0xFFFFFFFF
        _arrivals.setdefault(id(self), {})[pts] = time.monotonic()
        return super().add(packet)


aiortc.rtcrtpreceiver.JitterBuffer = TimedJitterBuffer  # type: ignore[misc]


class PacedTrack(MediaStreamTrack):
    """Queued 20 ms frames at 48 kHz, paced on an absolute clock, silence when there are none."""

    kind = "audio"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.queue: deque[tuple[av.AudioFrame, float]] = deque()
        self._metrics = metrics
        self._start: float | None = None
        self._pts = 0
        self._ideal_end = 0.0

    def put(self, frame: av.AudioFrame, made_at: float) -> None:
        due = max(made_at, self._ideal_end)  # the same ideal-player accounting as Parley's
        self._ideal_end = due + frame.samples / RATE
        self.queue.append((frame, due))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.queue:
            frame, due = self.queue.popleft()
            self._metrics.downlink_latency.observe(max(0.0, time.monotonic() - due))
        else:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, FRAME), np.int16), format="s16", layout="mono")
            frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += frame.samples
        return frame


class EchoCall:
    def __init__(self, metrics: Metrics) -> None:
        self.id = uuid.uuid4().hex
        self.pc = RTCPeerConnection(rtc_configuration([]))
        self.out = PacedTrack(metrics)
        self.metrics = metrics
        self.task: asyncio.Task[None] | None = None

    async def answer(self, offer: str) -> str:
        pc = self.pc
        pc.on("track", self._on_track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                transceiver.sender.replaceTrack(self.out)
                transceiver.direction = "sendrecv"
                break
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        self.task = asyncio.create_task(self._echo(track, receiver))

    async def _echo(self, track: MediaStreamTrack, receiver: aiortc.RTCRtpReceiver) -> None:
        to_model = av.AudioResampler(format="s16", layout="mono", rate=16000)
        from_model = av.AudioResampler(format="s16", layout="mono", rate=24000)
        to_caller = av.AudioResampler(format="s16", layout="mono", rate=RATE, frame_size=FRAME)
        arrivals = _arrivals.setdefault(id(receiver._RTCRtpReceiver__jitter_buffer), {})  # type: ignore[attr-defined]
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                arrived = arrivals.pop(frame.pts, None) if frame.pts is not None else None
                for pcm16 in to_model.resample(frame):  # what a model would get
                    now = time.monotonic()
                    if arrived is not None:
                        self.metrics.uplink_latency.observe(now - arrived)
                        arrived = None
                    for pcm24 in from_model.resample(pcm16):  # what a model would send back
                        for out in to_caller.resample(pcm24):
                            self.out.put(out, now)
                if len(arrivals) > 200:
                    arrivals.clear()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.pc.close()


CALLS = web.AppKey("calls", dict)
METRICS = web.AppKey("metrics", Metrics)


async def create_call(request: web.Request) -> web.Response:
    call = EchoCall(request.app[METRICS])
    answer = await call.answer(await request.text())
    request.app[CALLS][call.id] = call
    request.app[METRICS].calls_started.inc()
    request.app[METRICS].active_calls.inc()
    return web.Response(
        status=201,
        body=answer.encode(),
        content_type="application/sdp",
        headers={"Location": f"/v1/calls/{call.id}"},
    )


async def delete_call(request: web.Request) -> web.Response:
    call = request.app[CALLS].pop(request.match_info["call_id"], None)
    if call is None:
        return web.json_response({"error": "no such call"}, status=404)
    await call.close()
    request.app[METRICS].active_calls.dec()
    request.app[METRICS].calls_ended.labels(reason="hangup").inc()
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "active_calls": len(request.app[CALLS])})


async def metrics_page(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def serve(host: str, port: int) -> None:
    offer_host_addresses(["127.0.0.1"])
    metrics = Metrics()
    app = web.Application()
    app[CALLS] = {}
    app[METRICS] = metrics
    app.router.add_post("/v1/calls", create_call)
    app.router.add_delete("/v1/calls/{call_id}", delete_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    metrics.start()
    print(f"baseline listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for call in list(app[CALLS].values()):
            await call.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
