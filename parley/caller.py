"""`parley call`: a headless caller (aiortc) that talks to a Parley server like a browser would.

It sends Opus with in-band FEC (as browsers do), plays a WAV into the call, records what it hears
without a jitter buffer in the way (so the timings it reports are the server's, not its own), and
collects the events the agent sends on the data channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import random
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import RTCDataChannel, RTCIceTransportPolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from parley.agent.downlink import DTX_REFRESH_S, drop_rtp_history
from parley.agent.ice import rtc_configuration
from parley.agent.uplink import OpusUplink, tap_receiver
from parley.agent.vad import dbfs
from parley.camera import ColourCamera

RATE = 48000
FRAME = RATE // 50
# A received frame louder than this is the agent speaking.
SPEECH_DBFS = -40.0


def load_wav(path: str) -> np.ndarray:
    """Any WAV file as 48 kHz mono int16 samples."""
    out: list[np.ndarray] = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def save_wav(path: str, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())


class FecOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder with in-band FEC on, as a browser sends it."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.options = {"application": "voip", "fec": "1", "packet_loss": "10"}


class MicrophoneTrack(MediaStreamTrack):
    """What the caller says: queued samples in paced 20 ms frames, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._offset = 0
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.speaking = False
        self.speech_ends: list[float] = []
        self.speech_starts: list[float] = []

    def say(self, samples: np.ndarray) -> None:
        self._queue.append(samples.astype(np.int16))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = self._take(FRAME)
        now = time.monotonic()
        if samples is None:
            if self.speaking:
                self.speaking = False
                self.speech_ends.append(now)
            samples = np.zeros(FRAME, np.int16)
        elif not self.speaking:
            self.speaking = True
            self.speech_starts.append(now)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        frame.pts = self._pts
        self._pts += FRAME
        self.frames_sent += 1
        return frame

    def _take(self, count: int) -> np.ndarray | None:
        if not self._queue:
            return None
        parts = []
        while count and self._queue:
            head = self._queue[0]
            piece = head[self._offset : self._offset + count]
            parts.append(piece)
            count -= piece.size
            self._offset += piece.size
            if self._offset >= head.size:
                self._queue.popleft()
                self._offset = 0
        if count:
            parts.append(np.zeros(count, np.int16))
        return np.concatenate(parts)


@dataclass
class Heard:
    """Everything received, as 48 kHz samples, with each packet's arrival time and loudness. Silence the
    agent did not send (DTX) is filled in where the stream's RTP clock says it was."""

    chunks: list[np.ndarray] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    length: int = 0  # samples, the filled-in silence included

    def add(self, pcm: bytes, arrived_at: float, at: int | None = None) -> None:
        """`pcm` heard at `arrived_at`, starting at sample `at` of the recording (default: its end)."""
        if at is not None:
            self.fill_to(at, arrived_at)
        self._append(np.frombuffer(pcm, dtype="<i2").copy(), arrived_at)

    def fill_to(self, at: int, until: float) -> None:
        """Silence up to sample `at`, in 20 ms frames, each as if it had come when it would have played
        (the last at `until`)."""
        frames = -(-(at - self.length) // FRAME)
        for k in range(frames):
            silence = np.zeros(min(FRAME, at - self.length), np.int16)
            self._append(silence, until - (frames - 1 - k) * 0.02)

    def _append(self, samples: np.ndarray, arrived_at: float) -> None:
        self.chunks.append(samples)
        self.arrivals.append(arrived_at)
        self.levels.append(dbfs(samples) if samples.any() else -120.0)
        self.length += samples.size

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def first_loud_after(self, t: float) -> float | None:
        for arrival, level in zip(self.arrivals, self.levels, strict=True):
            if arrival >= t and level > SPEECH_DBFS:
                return arrival
        return None

    def last_loud(self) -> float | None:
        for arrival, level in zip(reversed(self.arrivals), reversed(self.levels), strict=True):
            if level > SPEECH_DBFS:
                return arrival
        return None


class Caller:
    """One call to a Parley server from Python: `await connect()`, `say()`, `await hang_up()`."""

    def __init__(
        self,
        server_url: str,
        uplink_loss: float = 0.0,
        fec: bool = True,
        seed: int = 1,
        token: str | None = None,
        encoder: Any = None,
        ice_servers: list[dict[str, Any]] | None = None,
        relay_only: bool = False,
        camera: ColourCamera | None = None,
        agent: str | None = None,
        variables: dict[str, str] | None = None,
        origin: str | None = None,
    ) -> None:
        """`encoder` replaces the Opus encoder (tests send garbage or floods with one); `camera`
        adds a video track (a synthetic camera) beside the microphone; `agent` and `variables` choose
        and fill in the agent (the offer then goes as JSON, like the page's); `origin` is sent as a
        page on that origin would send it."""
        self.server_url = server_url.rstrip("/") + "/"
        self._token = token
        configuration = rtc_configuration(ice_servers or [])
        if relay_only:  # only TURN-relayed candidates, as a browser with iceTransportPolicy "relay"
            configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        self.pc = RTCPeerConnection(configuration)
        self.mic = MicrophoneTrack()
        self.heard = Heard()
        self.downlink: OpusUplink | None = None
        self.events: list[dict[str, Any]] = []
        self.event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.call_url: str | None = None
        self.timings: dict[str, float] = {}
        self._uplink_loss = uplink_loss
        self._random = random.Random(seed)
        self._fec = fec
        self._encoder = encoder
        self.packets_dropped = 0
        self._connected = asyncio.Event()
        self.channel: RTCDataChannel | None = None
        self.answer_sdp = ""
        self._session: aiohttp.ClientSession | None = None
        self.camera = camera
        self.agent = agent
        self.variables = variables
        self.origin = origin

    async def connect(self, timeout_s: float = 10.0, resume: str | None = None) -> None:
        """Call the server; with `resume`, rejoin that call on this new connection."""
        pc = self.pc
        sender = pc.addTrack(self.mic)
        drop_rtp_history(sender)
        if self._fec or self._encoder is not None:
            # aiortc makes its encoder at the first frame; one put there first is used instead.
            sender._RTCRtpSender__encoder = self._encoder or FecOpusEncoder()  # type: ignore[attr-defined]
        if self.camera is not None:
            self.camera.sender = pc.addTrack(self.camera)
        channel = self.channel = pc.createDataChannel("events")
        channel.on("message", self._on_event)
        pc.on("connectionstatechange", self._on_state)
        transceiver = pc.getTransceivers()[0]
        # The agent's stream, decoded as it arrives; its RTP clock (48 kHz, as RATE) places each packet.
        base = self.heard.length
        downlink = self.downlink = OpusUplink(
            lambda pcm, at: self.heard.add(pcm, at, base + downlink.stats.rtp_span), sample_rate=RATE
        )
        tap_receiver(transceiver.receiver, downlink)
        started = time.monotonic()
        await pc.setLocalDescription(await pc.createOffer())
        self._session = aiohttp.ClientSession()
        params = {"resume": resume} if resume else {}
        if self.agent is not None:
            params["agent"] = self.agent
        as_json = self.variables is not None
        offer: str = pc.localDescription.sdp
        if as_json:
            offer = json.dumps({"type": "offer", "sdp": offer, "variables": self.variables})
        async with self._session.post(
            urljoin(self.server_url, "v1/calls"),
            params=params,
            data=offer,
            headers={
                "Content-Type": "application/json" if as_json else "application/sdp",
                **({"Authorization": f"Bearer {self._token}"} if self._token else {}),
                **({"Origin": self.origin} if self.origin else {}),
            },
        ) as response:
            body = await response.text()
            if response.status != 201:
                raise RuntimeError(f"call refused: {response.status} {body}")
            if as_json:
                body = json.loads(body)["sdp"]
            self.answer_sdp = body
            self.call_url = urljoin(self.server_url, response.headers["Location"])
        self.timings["answer_ms"] = (time.monotonic() - started) * 1000
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        if self._uplink_loss:
            self._make_uplink_lossy()
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        self.timings["connect_ms"] = (time.monotonic() - started) * 1000
        self.timings["connected_at"] = time.monotonic()

    def _make_uplink_lossy(self) -> None:
        # Drop RTP on its way out of this peer: real packets, really missing at the server.
        transport = self.pc.getTransceivers()[0].sender.transport
        send_rtp = transport._send_rtp

        async def lossy_send_rtp(data: bytes, *args: Any, **kwargs: Any) -> None:
            is_rtcp = len(data) > 1 and 192 <= data[1] <= 223  # RTCP shares this path
            if not is_rtcp and self._random.random() < self._uplink_loss:
                self.packets_dropped += 1
                return
            await send_rtp(data, *args, **kwargs)

        transport._send_rtp = lossy_send_rtp  # type: ignore[method-assign]

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()

    def _on_event(self, message: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            event = json.loads(message)
            event["received_at"] = time.monotonic()
            self.events.append(event)
            for listener in self.event_listeners:
                listener(event)

    def say(self, samples: np.ndarray) -> None:
        self.mic.say(samples)

    def hear_silence_until_now(self) -> None:
        """Fill in the silence since the agent's last packet, as far as its DTX rhythm (a packet every
        DTX_REFRESH_S) vouches for: a stream in DTX is only known to be silent up to its next packet."""
        if not self.heard.arrivals:
            return
        now = time.monotonic()
        frames = int(min(now - self.heard.arrivals[-1], DTX_REFRESH_S) / 0.02)
        self.heard.fill_to(self.heard.length + frames * FRAME, now)

    async def wait_for_event(self, kind: str, timeout_s: float, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events[after:]:
                if event.get("type") == kind:
                    return event
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {kind!r} event within {timeout_s} s")

    async def call_state(self) -> dict[str, Any]:
        assert self._session is not None and self.call_url is not None
        async with self._session.get(self.call_url) as response:
            result: dict[str, Any] = await response.json()
            return result

    async def hang_up(self) -> int | None:
        self.hear_silence_until_now()
        status = None
        if self._session is not None and self.call_url is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._session.delete(self.call_url) as response:
                    status = response.status
        await self.pc.close()
        if self._session is not None:
            await self._session.close()
        return status

    def turns(self) -> list[dict[str, float | None]]:
        """For each stretch the caller spoke: how long until the agent's voice was first heard."""
        out: list[dict[str, float | None]] = []
        for i, end in enumerate(self.mic.speech_ends):
            first = self.heard.first_loud_after(end)
            next_start = self.mic.speech_starts[i + 1] if i + 1 < len(self.mic.speech_starts) else None
            if first is not None and next_start is not None and first > next_start:
                first = None
            out.append(
                {
                    "speech_end_s": round(end - self.timings.get("connected_at", end), 3),
                    "response_ms": None if first is None else round((first - end) * 1000, 1),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "call": self.call_url,
            "answer_ms": round(self.timings.get("answer_ms", 0.0), 1),
            "connect_ms": round(self.timings.get("connect_ms", 0.0), 1),
            "frames_sent": self.mic.frames_sent,
            "frames_received": self.downlink.stats.packets if self.downlink else 0,
            "audio_s_received": round(self.heard.length / RATE, 2),
            "packets_dropped": self.packets_dropped,
            "turns": self.turns(),
            "events": [{k: v for k, v in e.items() if k != "received_at"} for e in self.events],
        }


async def run_call(
    url: str,
    play: str | None,
    record: str | None,
    seconds: float | None,
    loss: float,
    token: str | None = None,
) -> dict[str, Any]:
    caller = Caller(url, uplink_loss=loss, token=token)
    speech = load_wav(play) if play else np.zeros(0, np.int16)
    duration = seconds if seconds is not None else speech.size / RATE + 6.0
    await caller.connect()
    try:
        if speech.size:
            caller.say(speech)
        await asyncio.sleep(duration)
    finally:
        status = await caller.hang_up()
    summary = caller.summary()
    summary["hangup_status"] = status
    if record:
        save_wav(record, caller.heard.samples())
        summary["recorded"] = record
    return summary
