"""The load generator: N concurrent headless calls against a server with Parley's HTTP API.

Runs in its own process (`python -m bench.loadgen URL --calls N ...`). Each call sends the pre-encoded test
signal (bench/testsignal.py) as paced RTP (with --video, also a camera: bench/video.py), optionally
dropping a fraction of its packets, and taps what it
receives like `parley.caller` does (no jitter buffer, decoded on arrival, here at 16 kHz). Round-trip
latency is marker in, marker out: a 20 ms tone burst sent in silence, found in the received audio with
sample precision. Prints `MEASURE start` / `MEASURE end` lines around the measured window (the
orchestrator samples the server's CPU then), then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import itertools
import json
import random
import sys
import time
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.testsignal import FRAME, RATE, TestSignal, make_signal
from bench.video import PacketCamera
from parley.agent.downlink import DTX_REFRESH_S, drop_rtp_history
from parley.agent.ice import offer_host_addresses, rtc_configuration
from parley.agent.metrics import sample_loop_lag
from parley.agent.uplink import OpusUplink, tap_receiver
from tests.audio import best_alignment, snr_db

TIME_BASE = fractions.Fraction(1, RATE)
ONSET_LEVEL = 2000  # a received sample louder than this is the marker coming back (bursts are 8000)
MARKER_WINDOW_S = 0.45  # a marker must come back within this (the next one follows 0.5 s later)


class PacketMic(MediaStreamTrack):
    """The test signal as pre-encoded Opus packets, paced on an absolute clock, looping."""

    kind = "audio"

    def __init__(self, signal: TestSignal) -> None:
        super().__init__()
        self._payloads = signal.payloads
        self._markers = set(signal.marker_frames)
        self._speech_start = signal.speech_frames[0]
        self._start: float | None = None
        self._index = 0
        self.marker_sent: list[float] = []
        self.speech_sent: list[float] = []

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._index * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        i = self._index % len(self._payloads)
        packet = av.Packet(self._payloads[i])
        packet.pts = self._index * FRAME
        packet.time_base = TIME_BASE
        self._index += 1
        now = time.monotonic()
        if i in self._markers:
            self.marker_sent.append(now)
        elif i == self._speech_start:
            self.speech_sent.append(now)
        return packet


class BenchCall:
    def __init__(
        self, url: str, signal: TestSignal, loss: float, record: bool, seed: int, video: bool = False
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.camera = PacketCamera() if video else None
        self.pc = RTCPeerConnection(rtc_configuration([]))
        self.downlink = DownlinkTap(self._on_pcm)
        self.mic = PacketMic(signal)
        self.record = record
        self.loss = loss
        self.random = random.Random(seed)
        self.arrivals: list[float] = []
        # for each packet with a loud sample: its arrival plus that sample's offset in it
        self.onsets: list[float] = []
        self.pcm: list[bytes] = []
        self.timings: dict[str, float] = {}
        self.dropped = 0
        self.call_url: str | None = None
        self._connected = asyncio.Event()
        self.heard = asyncio.Event()
        self._t0 = 0.0
        # An agent profile to ask for, and variables for it (then the offer goes as JSON, like the page's).
        self.agent: str | None = None
        self.variables: dict[str, str] | None = None

    def _on_pcm(self, pcm: bytes, arrived_at: float) -> None:
        if not self.arrivals:
            self.timings["first_audio_ms"] = (arrived_at - self._t0) * 1000
            self.heard.set()
        self.arrivals.append(arrived_at)
        samples = np.frombuffer(pcm, dtype="<i2")
        loud = np.flatnonzero(np.abs(samples) > ONSET_LEVEL)
        if loud.size:
            self.onsets.append(arrived_at + loud[0] / 16000)
        if self.record:
            self.pcm.append(pcm)

    async def connect(self, session: aiohttp.ClientSession) -> None:
        pc = self.pc
        drop_rtp_history(pc.addTrack(self.mic))  # its garbage-collector pauses would burst the packets
        transceiver = pc.getTransceivers()[0]
        tap_receiver(transceiver.receiver, self.downlink)
        if self.camera is not None:
            self.camera.listen(pc.addTrack(self.camera))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self._connected.set()

        self._t0 = time.monotonic()
        await pc.setLocalDescription(await pc.createOffer())
        offered = time.monotonic()
        offer, content_type = pc.localDescription.sdp, "application/sdp"
        if self.variables is not None:
            offer = json.dumps({"type": "offer", "sdp": offer, "variables": self.variables})
            content_type = "application/json"
        async with session.post(
            urljoin(self.url, "v1/calls"),
            params={"agent": self.agent} if self.agent else None,
            data=offer,
            headers={"Content-Type": content_type},
        ) as response:
            body = await response.text()
            if response.status != 201:
                raise RuntimeError(f"call refused: {response.status} {body[:200]}")
            if self.variables is not None:
                body = json.loads(body)["sdp"]
            self.call_url = urljoin(self.url, response.headers["Location"])
        answered = time.monotonic()
        self.timings["offer_ms"] = (offered - self._t0) * 1000
        self.timings["answer_ms"] = (answered - offered) * 1000
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        if self.loss:
            self._make_lossy()
        await asyncio.wait_for(self._connected.wait(), 20)
        self.timings["connect_ms"] = (time.monotonic() - self._t0) * 1000
        self.timings["answered_at"] = answered

    def _make_lossy(self) -> None:
        transport = self.pc.getTransceivers()[0].sender.transport
        send_rtp = transport._send_rtp

        async def lossy_send_rtp(data: bytes, *args: Any, **kwargs: Any) -> None:
            is_rtcp = len(data) > 1 and 192 <= data[1] <= 223
            if not is_rtcp and self.random.random() < self.loss:
                self.dropped += 1
                return
            await send_rtp(data, *args, **kwargs)

        transport._send_rtp = lossy_send_rtp  # type: ignore[method-assign]

    async def hang_up(self, session: aiohttp.ClientSession) -> None:
        if self.call_url is not None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.delete(self.call_url, timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        await self.pc.close()

    # --- analysis -----------------------------------------------------------------------------

    def round_trips(self, start: float, end: float) -> list[tuple[float, float]]:
        """(sent at, round trip s) of every marker sent in [start, end); inf when it never came back."""
        onsets = np.asarray(self.onsets)
        out: list[tuple[float, float]] = []
        for sent in self.mic.marker_sent:
            if not start <= sent < end:
                continue
            i = int(np.searchsorted(onsets, sent))
            back = onsets[i] if i < onsets.size else None
            rtt = back - sent if back is not None and back - sent < MARKER_WINDOW_S else float("inf")
            out.append((sent, float(rtt)))
        return out

    def frame_rate(self, start: float, end: float) -> float:
        """20 ms frames of the agent's stream that came a second over [start, end): 50 for a server that
        keeps real time. A DTX packet counts as the silent frames it stands for, up to the sender's
        400 ms rhythm (20 frames), each at the time it would have played; silence a stalled server
        skipped does not count."""
        packets = self.downlink.packets
        if not packets:
            return 0.0
        arrivals = np.array([at for at, _, _ in packets])
        frames = np.ones(len(packets))
        for i, ((_, stamp, dtx), (_, next_stamp, _)) in enumerate(itertools.pairwise(packets)):
            if dtx:
                frames[i] = max(1, min(DTX_FRAMES, ((next_stamp - stamp) & 0xFFFFFFFF) // 960))
        offsets = np.arange(DTX_FRAMES) * 0.02
        play = arrivals[:, None] + offsets[None, :]
        counted = (offsets[None, :] < frames[:, None] * 0.02 - 0.001) & (play >= start) & (play < end)
        return float(np.count_nonzero(counted) / (end - start))

    def speech_snr(self, signal: TestSignal, start: float, end: float) -> list[float]:
        """SNR (dB) of each sentence that came back, against the clean 16 kHz copy."""
        if not self.pcm:
            return []
        received = np.frombuffer(b"".join(self.pcm), dtype="<i2")
        arrivals = np.repeat(np.asarray(self.arrivals), 320)  # one arrival time per received sample
        ref = signal.speech16
        out = []
        for sent in self.mic.speech_sent:
            if not start <= sent < end - ref.size / 16000 - 0.5:
                continue
            lo = int(np.searchsorted(arrivals, sent))
            window = received[lo : lo + ref.size + 16000]
            lag, match = best_alignment(ref, window)
            if match < 0.3:
                continue
            out.append(snr_db(ref, window[lag : lag + ref.size]))
        return out


# A DTX packet stands for itself and the silent frames after it, up to the next (DTX_REFRESH_S later).
DTX_FRAMES = round(DTX_REFRESH_S / 0.02)


class DownlinkTap(OpusUplink):
    """The agent's stream, decoded as it arrives (16 kHz), with each packet's arrival, RTP timestamp and
    whether it was DTX (at most 2 bytes: RFC 6716's TOC-only frame), for `frame_rate`."""

    def __init__(self, sink: Any) -> None:
        super().__init__(sink, sample_rate=16000)
        self.packets: list[tuple[float, int, bool]] = []

    def add(self, packet: Any) -> tuple[bool, None]:
        payload = getattr(packet, "_data", packet.payload)
        self.packets.append((time.monotonic(), packet.timestamp, len(payload) <= 2))
        return super().add(packet)


async def ramped(connect: Any, call: BenchCall, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await connect(call)


def pct(values: list[float], q: float) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.percentile(finite, q)) * 1000, 2) if finite else None


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    signal = make_signal()
    lag: list[float] = []
    lag_task = asyncio.create_task(sample_loop_lag(lag.append))
    calls = [
        BenchCall(args.url, signal, args.loss, args.record, seed=i + 1, video=args.video)
        for i in range(args.calls)
    ]
    session = aiohttp.ClientSession()
    failures: list[str] = []
    gate = asyncio.Semaphore(4)

    async def connect(call: BenchCall) -> None:
        async with gate:
            try:
                await call.connect(session)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])

    try:
        if args.measure_setup:  # the window takes in the set-ups: calls start in it, one every --ramp s
            start = time.monotonic()
            print("MEASURE start", flush=True)
            await asyncio.gather(*(ramped(connect, c, i * args.ramp) for i, c in enumerate(calls)))
        else:
            await asyncio.gather(*(connect(c) for c in calls))
            await asyncio.sleep(args.warmup)
            start = time.monotonic()
            lag.clear()
            print("MEASURE start", flush=True)
        await asyncio.sleep(args.seconds)
        end = time.monotonic()
        print("MEASURE end", flush=True)
        lag_end = list(lag)
    finally:
        await asyncio.gather(*(c.hang_up(session) for c in calls), return_exceptions=True)
        await session.close()
        lag_task.cancel()
    live = [c for c in calls if c.timings.get("connect_ms")]
    rtts = [r for c in live for r in c.round_trips(start, end)]
    per_call_growth = []
    for c in live:
        mine = [rtt for _, rtt in c.round_trips(start, end) if np.isfinite(rtt)]
        if len(mine) >= 4:
            q = max(1, len(mine) // 3)
            per_call_growth.append(float(np.median(mine[-q:]) - np.median(mine[:q])))
    rates = [c.frame_rate(start, end) for c in live]
    # the whole load's drift: p95 of the round trips in the second half of the window against the first
    middle = (start + end) / 2
    early = [rtt for sent, rtt in rtts if sent < middle]
    late = [rtt for sent, rtt in rtts if sent >= middle]
    p95_early, p95_late = pct(early, 95), pct(late, 95)
    drift = round(p95_late - p95_early, 2) if p95_early is not None and p95_late is not None else None
    values = [r for _, r in rtts]
    snrs = [s for c in live for s in c.speech_snr(signal, start, end)]
    camera_frames = [
        sum(1 for at, _ in c.camera.sent_at if start <= at < end) / (end - start) for c in live if c.camera
    ]
    return {
        "calls": args.calls,
        "connected": len(live),
        "failures": failures[:5],
        "seconds": round(end - start, 3),
        "loss": args.loss,
        "packets_dropped": sum(c.dropped for c in live),
        "rtt_ms": {"p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99)},
        "markers": len(values),
        "markers_lost": sum(1 for v in values if not np.isfinite(v)),
        "rtt_growth_ms": {
            "median": round(float(np.median(per_call_growth)) * 1000, 2) if per_call_growth else None,
            "max": round(float(np.max(per_call_growth)) * 1000, 2) if per_call_growth else None,
            "p95_drift": drift,
        },
        "frames_per_s": {
            "min": round(min(rates), 2) if rates else 0.0,
            "mean": round(float(np.mean(rates)), 2) if rates else 0.0,
        },
        "snr_db": {
            "mean": round(float(np.mean(snrs)), 2) if snrs else None,
            "min": round(float(np.min(snrs)), 2) if snrs else None,
            "count": len(snrs),
        },
        "setup_ms": {
            key: pct([c.timings[key] / 1000 for c in live if key in c.timings], 50)
            for key in ("answer_ms", "connect_ms", "first_audio_ms")
        },
        "loadgen_loop_lag_ms": {"p99": pct(lag_end, 99), "max": pct(lag_end, 100)},
        "video_frames_per_s": round(float(np.mean(camera_frames)), 2) if camera_frames else None,
        "video_keyframes": sum(c.camera.keyframes_sent for c in live if c.camera),
    }


async def run_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Calls one after another on an idle server: how long set-up takes."""
    signal = make_signal()
    rows = []
    async with aiohttp.ClientSession() as session:
        for i in range(args.setup):
            call = BenchCall(args.url, signal, 0.0, False, seed=i)
            call.agent = args.agent
            call.variables = json.loads(args.variables) if args.variables else None
            try:
                await call.connect(session)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(call.heard.wait(), 5)
                t = call.timings
                rows.append(
                    {
                        "answer_ms": t["answer_ms"],
                        "connect_ms": t["connect_ms"],
                        "first_audio_ms": t.get("first_audio_ms"),
                        "first_audio_after_answer_ms": (call.arrivals[0] - t["answered_at"]) * 1000
                        if call.arrivals
                        else None,
                    }
                )
            finally:
                await call.hang_up(session)
            await asyncio.sleep(0.3)
    out: dict[str, Any] = {"setup_calls": len(rows)}
    for key in ("answer_ms", "connect_ms", "first_audio_ms", "first_audio_after_answer_ms"):
        values = [float(v) / 1000 for r in rows if (v := r[key]) is not None]
        out[key] = {"p50": pct(values, 50), "max": pct(values, 100)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="concurrent benchmark calls")
    parser.add_argument("url")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--loss", type=float, default=0.0, help="fraction of uplink RTP packets dropped")
    parser.add_argument("--record", action="store_true", help="keep the received audio (for the SNR)")
    parser.add_argument("--video", action="store_true", help="each call also sends a camera (bench/video.py)")
    parser.add_argument(
        "--measure-setup", action="store_true", help="measure from before the first call is set up"
    )
    parser.add_argument("--ramp", type=float, default=0.0, help="with --measure-setup: s between call starts")
    parser.add_argument("--setup", type=int, default=0, help="instead: this many calls one after another")
    parser.add_argument("--agent", default=None, help="the agent profile set-up calls ask for")
    parser.add_argument("--variables", default=None, help="JSON variables set-up calls send with it")
    args = parser.parse_args()
    offer_host_addresses(["127.0.0.1"])
    result = asyncio.run(run_setup(args) if args.setup else run_load(args))
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
