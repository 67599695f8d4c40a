"""One call: a caller's peer connection joined to one Gemini conversation, in both directions.

    caller RTP -> OpusUplink (16 kHz PCM) -> GeminiSession.send_audio -> Gemini
    Gemini audio -> ModelAudio (48 kHz) -> PlayoutBuffer -> PlayoutTrack -> caller

Events (transcripts, turns, interruptions, timings, the end reason) go to the caller as JSON on the
data channel it opened, if it opened one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from parley.agent.call_report import media_counters, media_summary
from parley.agent.call_state import CallState, advance
from parley.agent.downlink import PLAYOUT_RATE, ModelAudio, MonoOpusEncoder, PlayoutBuffer, PlayoutTrack
from parley.agent.ice import rtc_configuration
from parley.agent.observer import CallAudioTap, CallObserver, Measure
from parley.agent.sdp import OfferError, ask_for_inband_fec, check_offer
from parley.agent.session import SessionEnded, SessionFactory
from parley.agent.uplink import OpusUplink, tap_receiver
from parley.agent.vad import FRAME_S, Speech, SpeechDetector
from parley.agent.video import VideoOptions, VideoPath

logger = logging.getLogger(__name__)

# The caller's events channel takes small JSON messages; anything else is logged and ignored.
MAX_CLIENT_MESSAGE = 4096


@dataclass
class CallOptions:
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    no_media_timeout_s: float = 10.0
    # Stop the agent as soon as the local detector hears the user, before Gemini's `interrupted`.
    local_bargein: bool = True
    # Opus DTX on the downlink: settled silence goes out as one DTX packet every 400 ms, not 50 a second.
    downlink_dtx: bool = True
    # False: stop streaming after a pause (audioStreamEnd) and resume with a pre-roll, to save cost.
    send_silence: bool = True
    pause_after_s: float = 1.0
    preroll_s: float = 0.3
    # How long a call whose connection failed waits for the caller to rejoin it.
    rejoin_grace_s: float = 20.0
    max_duration_s: float = 3600.0
    video: VideoOptions = field(default_factory=VideoOptions)
    # Which agent profile the call was made from, and its model (what GET /v1/calls/{id} and records say).
    agent: str = "default"
    model: str | None = None
    caller: dict[str, str] = field(default_factory=dict)  # for records: "origin", "client_address"
    # Who hears what the call does: the process's metrics, records, traces (parley/agent/observer.py).
    observer: CallObserver = field(default_factory=CallObserver)
    # A recording of the call's audio (PARLEY_RECORD_AUDIO), made for each call from its id.
    audio_tap: Callable[[str], CallAudioTap] | None = None


class Call:
    def __init__(
        self,
        make_session: SessionFactory,
        options: CallOptions,
        on_ended: Callable[[Call], None],
        call_id: str | None = None,
    ) -> None:
        self._id = call_id or uuid.uuid4().hex
        self.created_at = time.monotonic()
        self.state = CallState.NEW
        self._end_reason: str | None = None
        self._on_ended = on_ended
        self.options = options
        self._observer = options.observer
        self._tap = options.audio_tap(self._id) if options.audio_tap is not None else None
        self._tap_agent = self._tap.agent if self._tap is not None else None
        self.pc = RTCPeerConnection(rtc_configuration(options.ice_servers))
        self.uplink = OpusUplink(self._on_caller_pcm, flood_guard=True)
        self.playout_buffer = PlayoutBuffer()
        self.model_audio = ModelAudio(self.playout_buffer)
        self.track = self._new_track()
        self.session = make_session(self)
        self.playout_buffer.live = self.session.live_audio
        self.channel: RTCDataChannel | None = None
        self.video: VideoPath | None = None  # made when an offer first carries video
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self.uplink_latency_s: deque[float] = deque(maxlen=1000)
        self.downlink_latency_s: deque[float] = deque(maxlen=1000)
        self.bargein_stop_s: deque[float] = deque(maxlen=100)
        self.turns = 0
        self.rejoins = 0
        self.reconnecting_since: float | None = None
        # Where the no-media clock starts while the current connection has sent nothing yet: a rejoin
        # restarts it, or a call older than the timeout would end before its new connection's first packet.
        self.connected_since = self.created_at
        self._turn_started = False
        self._turn_interrupted = False
        self.vad = SpeechDetector()
        self.user_speech_ended_at: float | None = None
        self._streaming = True
        self._silent_since: float | None = None
        self._preroll: deque[bytes] = deque(maxlen=max(1, round(options.preroll_s / FRAME_S)))
        self.track.after_next_frame(
            lambda: self._measured(Measure.FIRST_AUDIO, time.monotonic() - self.created_at)
        )
        self._observer.call_started(self)

    @property
    def id(self) -> str:
        return self._id

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    def _new_track(self) -> PlayoutTrack:
        encoder, dtx = MonoOpusEncoder(), self.options.downlink_dtx
        return PlayoutTrack(self.playout_buffer, self._on_playout_started, encoder, self._tap_agent, dtx=dtx)

    def _move(self, state: CallState) -> None:
        moved = state is not self.state
        self.state = advance(self.state, state)
        if moved:
            self._observer.call_state(self, state)

    def _measured(self, measure: Measure, seconds: float) -> None:
        self._observer.latency(self, measure, seconds)

    # --- set-up -------------------------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Accept the caller's offer; the Gemini connection opens while ICE and DTLS run."""
        check_offer(offer_sdp)
        answer = await self._negotiate(self.pc, offer_sdp)
        self._tasks.append(asyncio.create_task(self._run_session(), name=f"gemini-{self.id}"))
        self._tasks.append(asyncio.create_task(self._watch_media(), name=f"watchdog-{self.id}"))
        self._move(CallState.CONNECTING)
        return answer

    async def rejoin(self, offer_sdp: str) -> str:
        """A new peer connection from the same caller (network switch, ICE failure) takes over this call.

        aiortc has no ICE restart, so the caller makes a fresh connection; the Gemini session, its
        context and the agent's queued speech carry on as if nothing happened.
        """
        check_offer(offer_sdp)
        if self._closing is not None:
            raise OfferError(404, "that call has ended")
        old = self.pc, self.uplink, self.track, self.channel, self.connected_since
        self.pc = RTCPeerConnection(rtc_configuration(self.options.ice_servers))
        # A new stream: new SSRC and sequence numbers, and a new sender for the same playout buffer.
        self.uplink = OpusUplink(self._on_caller_pcm, flood_guard=True)
        self.track = self._new_track()
        self.channel = None
        # The new uplink has no packet yet: the no-media clock restarts now, not after negotiating, or a
        # slow negotiation on a busy worker would end the call it is rejoining.
        self.connected_since = time.monotonic()
        try:
            answer = await self._negotiate(self.pc, offer_sdp)
            if self._closing is not None:  # ended while negotiating (hung up, its time was up)
                raise OfferError(404, "that call has ended")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.pc.close()
            self.pc, self.uplink, self.track, self.channel, self.connected_since = old
            raise
        self.rejoins += 1
        self.reconnecting_since = None
        self.connected_since = time.monotonic()
        self._move(CallState.CONNECTING)
        old[2].stop()
        with contextlib.suppress(Exception):
            await old[0].close()
        return answer

    async def _negotiate(self, pc: RTCPeerConnection, offer_sdp: str) -> str:
        # Handlers ignore a peer connection that has since been replaced by a rejoin.
        async def on_state() -> None:
            if pc is self.pc:
                await self._on_connection_state()

        pc.on("connectionstatechange", on_state)
        pc.on("datachannel", self._on_datachannel)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await asyncio.sleep(0)  # the offer and the answer are 1-2 ms each: two steps, not one
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        transceiver = audio[0]
        self.track.send_on(transceiver.sender)
        transceiver.direction = "sendrecv"
        tap_receiver(transceiver.receiver, self.uplink)
        for extra in audio[1:]:
            extra.direction = "inactive"
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        for extra in video[1:] if self.options.video.enabled else video:
            extra.direction = "inactive"  # rejected m-lines (port 0), or the agent takes no video
        if video and self.options.video.enabled:
            video[0].direction = "recvonly"
            if self.video is None:
                self.video = VideoPath(
                    self.options.video, self.session.send_video, self.emit, name=f"video-{self.id[:8]}"
                )
            self.video.attach(video[0])
        await pc.setLocalDescription(await pc.createAnswer())
        return ask_for_inband_fec(pc.localDescription.sdp)

    # --- the two directions ------------------------------------------------------------------

    def _on_caller_pcm(self, pcm: bytes, arrived_at: float) -> None:
        if self._tap is not None:
            self._tap.caller(pcm)
        self.vad.agent_speaking = self._turn_started or self.playout_buffer.queued > 0
        for event in self.vad.feed(pcm):
            if event is Speech.STARTED:
                self.emit("user_speech_start")
                if self.options.local_bargein and self.vad.agent_speaking:
                    self._barge_in("local")
                if not self._streaming:
                    self._streaming = True
                    for frame in self._preroll:
                        self.session.send_audio(frame, arrived_at)
                    self._preroll.clear()
            else:
                self.user_speech_ended_at = arrived_at
                self._silent_since = arrived_at
                self.emit("user_speech_end")
        if self.video is not None and (self.vad.speaking or self.vad.agent_speaking):
            self.video.activity()  # someone speaks: video at the full rate
        if self._streaming:
            self.session.send_audio(pcm, arrived_at)
            if (
                not self.options.send_silence
                and not self.vad.speaking
                and self._silent_since is not None
                and arrived_at - self._silent_since >= self.options.pause_after_s
            ):
                self._streaming = False
                self._silent_since = None
                self.session.end_audio_stream()
        else:
            self._preroll.append(pcm)

    def on_model_audio(self, pcm: bytes, arrived_at: float) -> None:
        if not self._turn_started:
            self._turn_started = True
            self._turn_interrupted = False
            self.turns += 1
            response_ms = None
            if self.user_speech_ended_at is not None:
                response_ms = round((arrived_at - self.user_speech_ended_at) * 1000)
                # The detector decided the user had stopped a hangover after they did.
                heard_s = arrived_at - self.user_speech_ended_at + self.vad.hangover_s
                self._measured(Measure.RESPONSE, max(0.0, heard_s))
                self.user_speech_ended_at = None
            self.emit("agent_turn_start", turn=self.turns, response_ms=response_ms)
        self.model_audio.push(pcm, arrived_at)

    def _on_playout_started(self, arrived_at: float) -> None:
        latency = time.monotonic() - arrived_at
        self.downlink_latency_s.append(latency)
        self._measured(Measure.DOWNLINK, latency)

    def on_audio_sent(self, latency_s: float) -> None:
        self.uplink_latency_s.append(latency_s)
        self._measured(Measure.UPLINK, latency_s)

    def on_interrupted(self) -> None:
        self._barge_in("gemini")

    def _barge_in(self, source: str) -> None:
        if self._turn_interrupted:
            return  # the local detector already cut this turn
        self._turn_interrupted = True
        started = time.monotonic()
        dropped = self.model_audio.interrupt()

        # measured to the first frame the track emits after the cut: silence leaving the agent
        def stopped() -> None:
            self.bargein_stop_s.append(time.monotonic() - started)
            self._measured(Measure.BARGEIN_STOP, self.bargein_stop_s[-1])

        self.track.after_next_frame(stopped)
        self.emit(
            "interrupted", turn=self.turns, source=source, dropped_ms=round(dropped * 1000 / PLAYOUT_RATE)
        )

    def on_turn_complete(self, cut: bool = False) -> None:
        self.model_audio.end_turn()
        if self._turn_started:
            self.emit("agent_turn_end", turn=self.turns, interrupted=self._turn_interrupted, cut=cut)
        self._turn_started = False
        self._turn_interrupted = False

    def on_transcript(self, role: str, text: str, finished: bool) -> None:
        self.emit("transcript", role="user" if role == "user" else "agent", text=text, final=finished)

    def on_observed(self, kind: str, detail: dict[str, Any]) -> None:
        self._observer.call_event(self, kind, detail)

    def on_grounding(self, detail: dict[str, Any]) -> None:
        self.emit("grounding", **detail)

    def on_session_event(self, kind: str, detail: dict[str, Any]) -> None:
        logger.info("call %s: gemini %s %s", self.id[:8], kind, detail)
        self.emit("session", event=kind, **detail)

    # --- events to the caller ----------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._on_client_message)
        self.emit("call", id=self.id)
        self.session.caller_connected()  # its events now reach the caller: the agent may greet

    def _on_client_message(self, message: str | bytes) -> None:
        if len(message) > MAX_CLIENT_MESSAGE:
            logger.info("call %s: ignored a %d-byte data channel message", self.id[:8], len(message))
            return
        try:
            event = json.loads(message)
        except ValueError:
            logger.info("call %s: ignored a data channel message that is not JSON", self.id[:8])
            return
        kind = event.get("type") if isinstance(event, dict) else None
        ms = event.get("ms") if isinstance(event, dict) else None
        if kind == "voice_to_voice" and isinstance(ms, int | float) and 0 < ms < 60000:
            self._observer.call_event(self, "client_stats", {"voice_to_voice_ms": float(ms)})  # for records
        elif kind == "ping":
            self.emit("pong", t=event.get("t"))
        else:
            logger.info("call %s: ignored an unknown data channel message", self.id[:8])

    def emit(self, kind: str, **fields: Any) -> None:
        """An event for the caller (if its channel is open) and for the observer."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps({"type": kind, "t": round(time.time(), 3), **fields}))
        if kind != "pong":
            self._observer.call_event(self, kind, fields)

    # --- watchdogs and teardown --------------------------------------------------------------

    async def _run_session(self) -> None:
        try:
            await self.session.run()
        except SessionEnded as exc:
            self.close(exc.reason)
        except Exception:
            logger.exception("call %s: gemini session failed", self.id[:8])
            self.close("gemini_error")

    async def _watch_media(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.options.no_media_timeout_s / 4))
            now = time.monotonic()
            if now - self.created_at > self.options.max_duration_s:
                self.close("max_duration")
                return
            if self.reconnecting_since is not None:
                if now - self.reconnecting_since > self.options.rejoin_grace_s:
                    self.close("connection_failed")
                    return
                continue
            last = self.uplink.stats.last_packet_at or self.connected_since
            if now - last > self.options.no_media_timeout_s:
                self.close("no_media")
                return

    async def _on_connection_state(self) -> None:
        if self._closing is not None:
            return
        state = self.pc.connectionState
        if state == "connected":
            self._move(CallState.ACTIVE)
            # A caller without an events channel is greeted too, once its media has had a moment.
            asyncio.get_running_loop().call_later(1.0, self.session.caller_connected)
        elif state == "failed" and self.options.rejoin_grace_s > 0:
            # The caller may come back on a new connection (POST /v1/calls with "resume").
            self._move(CallState.RECONNECTING)
            self.reconnecting_since = time.monotonic()
            logger.info(
                "call %s: connection failed, waiting %g s for the caller to rejoin",
                self.id[:8],
                self.options.rejoin_grace_s,
            )
        elif state in ("failed", "closed"):
            self.close("connection_failed" if state == "failed" else "peer_closed")

    def close(self, reason: str) -> asyncio.Task[None]:
        """End the call (idempotent): the first reason given is the one recorded."""
        if self._closing is None:
            self._end_reason = reason
            self._move(CallState.ENDING)
            self._closing = asyncio.create_task(self._teardown())
        return self._closing

    async def _teardown(self) -> None:
        self.emit("ended", reason=self.end_reason)
        if self._tap is not None:
            self._tap.close()
        await self.session.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        self.track.stop()
        if self.video is not None:
            await self.video.close()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self._move(CallState.ENDED)
        logger.info("call %s ended: %s", self.id[:8], json.dumps(self.summary()))
        self._observer.call_ended(self)
        self._on_ended(self)

    def summary(self) -> dict[str, Any]:
        head = dict(call=self.id, state=self.state, end_reason=self.end_reason, agent=self.options.agent)
        if self.options.model is not None:
            head["model"] = self.options.model
        latencies = {
            "uplink": self.uplink_latency_s,
            "downlink": self.downlink_latency_s,
            "bargein_stop": self.bargein_stop_s,
        }
        seconds = time.monotonic() - self.created_at
        stats = self.session.stats
        media = media_summary(stats, self.uplink.stats, self.track, self.video, latencies, seconds)
        return {
            **head,
            "seconds": round(seconds, 2),
            "turns": self.turns,
            "rejoins": self.rejoins,
            **media,
        }

    def counters(self) -> dict[str, float]:
        """Running totals, for the process's counters (metrics sum them over calls)."""
        return media_counters(self.session.stats, self.uplink.stats, self.track, self.video)
