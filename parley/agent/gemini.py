"""The Gemini side of a call: one logical conversation over as many Live connections as it takes.

A `GeminiSession` owns the google-genai SDK connection (`client.aio.live.connect`). It sends the caller's
PCM as it comes, hands the model's audio and events to a `SessionListener`, and keeps the conversation
alive across Gemini's connection lifetime (goAway), dropped sockets and stale handles:

- every setup asks for session resumption; a handle is kept only when the server says it is resumable;
- audio sent since the last good handle is kept (bounded) and sent again on the next connection, because
  the resumed state knows nothing after that handle; audio that arrives while no connection is up waits
  in the same bounded buffer;
- on goAway the replacement connection is opened before the old one is closed, at a turn boundary, or at
  once when little time is left;
- a stale handle (1008) or an exhausted context (1007) starts a fresh session seeded with the transcript;
  a seed that keeps failing is halved down to nothing rather than retried as it was.

The 3.x models (live_rules.py, docs/gemini-3x-rules.md) change four things here: the seed goes as
initial history (`historyConfig`, one `clientContent` with `turnComplete: true`, before any audio); a
goAway switch closes the old connection before resuming (the service refuses a concurrent resume);
digital zeros are never sent (comfort noise instead) and a paused turn gets quiet trailing audio; and
tools are NON_BLOCKING with `scheduling` in their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from google import genai
from google.genai import types

from parley.agent.audio_outbox import AudioOutbox
from parley.agent.gemini_setup import connect_config, refused_setting, seed_turns
from parley.agent.live_config import SessionConfig, greeting_text
from parley.agent.live_rules import Closed, closed
from parley.agent.realtime_blob import BlobSender
from parley.agent.session import SessionEnded, SessionFactory, SessionListener, SessionStats
from parley.agent.tool_calls import ToolCalls
from parley.agent.usage import count_usage, grounding_sources

__all__ = ["GeminiSession", "SessionConfig", "gemini_sessions", "parse_duration_s"]

logger = logging.getLogger(__name__)

INPUT_MIME = "audio/pcm;rate=16000"
VIDEO_MIME = "image/jpeg"
INPUT_BYTES_PER_SECOND = 16000 * 2
STABLE_CONNECTION_S = 10.0
# A replacement that dies with 1011 this soon after opening was a refused concurrent resume.
CONCURRENT_REFUSAL_S = 2.0


class _Connection:
    """Per-connection state: made new for every connection so no flag survives a reconnect."""

    def __init__(self, live: Any, exit_stack: contextlib.AsyncExitStack, replacement: bool) -> None:
        self.live = live
        self.exit_stack = exit_stack
        self.replacement = replacement  # opened by a make-before-break goAway switch
        self.seeded = False  # a fresh session given the transcript as history
        self.opened_at = time.monotonic()
        self.generating = False
        self.goaway_deadline: float | None = None
        self.audio = BlobSender(live, "audio", INPUT_MIME, None)
        self.video = BlobSender(live, "video", VIDEO_MIME, None)


def parse_duration_s(value: str | None) -> float:
    """Protobuf JSON durations: "50s", "0.5s"."""
    if not value:
        return 0.0
    match = re.fullmatch(r"\s*([0-9.]+)s\s*", value)
    return float(match.group(1)) if match else 0.0


class GeminiSession:
    def __init__(self, client: genai.Client, config: SessionConfig, listener: SessionListener) -> None:
        self._client = client
        self._config = config
        self._listener = listener
        self.stats = SessionStats()
        chunk_bytes = max(2, INPUT_BYTES_PER_SECOND * config.uplink_chunk_ms // 1000) & ~1
        self._audio = AudioOutbox(
            chunk_bytes, int(config.resend_buffer_s * INPUT_BYTES_PER_SECOND), self.stats
        )
        self._wake = asyncio.Event()
        self._video: bytes | None = None  # the newest JPEG not yet sent: a slot, never a queue
        self._latest_video: bytes | None = None  # what a new connection is shown at once
        self._handle: str | None = None
        self._transcript: list[tuple[str, str]] = []
        self._closed = False
        self.live_audio = False  # Gemini speaks in bursts, ahead of playout
        self._family = config.family
        # Said once, when the caller is there to hear it (a reconnect carries on the conversation).
        self._greeting = config.greeting
        self._caller_here = False
        # 3.x refuses a resume while the old connection is open: close it first. Learnt on 2.5 too
        # if the service ever refuses one.
        self._break_before_make = self._family == "3.x"
        self._switch_began = 0.0
        # Tool calls run across connections: a resumed session still waits for their answers.
        self._tools = ToolCalls(config, self._family, listener, self.stats)
        self._refused_switch_at: float | None = None  # a switch whose resume was refused: not over yet

    # --- the uplink's door -------------------------------------------------------------------

    def send_audio(self, pcm: bytes, arrived_at: float) -> None:
        """Queue caller PCM (16 kHz mono s16); never blocks, whatever the connection is doing."""
        self._audio.add(pcm, arrived_at)
        self._wake.set()

    def send_video(self, jpeg: bytes) -> None:
        """Show Gemini a JPEG still. Only the newest waits; it goes when no audio is waiting."""
        self._video = self._latest_video = jpeg
        self._wake.set()

    def caller_connected(self) -> None:
        self._caller_here = True
        self._wake.set()

    def end_audio_stream(self) -> None:
        """The caller paused: send what is buffered, then `audioStreamEnd` so Gemini ends the turn.
        On 3.x `audioStreamEnd` alone ends nothing: quiet real audio goes before it."""
        self._audio.end_stream(self._config.trailing_audio_s if self._family == "3.x" else 0.0)
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the conversation until `close()`; raises SessionEnded when it cannot go on."""
        refused = refused_setting(self._config)
        if refused is not None:
            raise SessionEnded(refused)
        conn: _Connection | None = None
        failures = 0
        try:
            while not self._closed:
                if conn is None:
                    try:
                        conn = await self._open()
                    except SessionEnded:
                        raise
                    except Exception as exc:
                        failures += 1
                        self._on_failure(closed(exc), failures, at_setup=True)
                        await asyncio.sleep(self._backoff(failures))
                        continue
                try:
                    await self._serve(conn)
                except Exception as exc:
                    info = closed(exc)
                    # A connection that opens and dies at once counts against the limit like one that
                    # never opened; one that held for a while starts the count afresh.
                    lived = time.monotonic() - conn.opened_at
                    if conn.replacement and info.code == 1011 and lived < CONCURRENT_REFUSAL_S:
                        # The service refused the resume while the old connection was still open:
                        # resume at once (the old one is closed now), and close first from now on.
                        self._break_before_make = True
                        self._refused_switch_at = self._switch_began
                        self._listener.on_session_event("concurrent_resume_refused", {})
                        lived = STABLE_CONNECTION_S
                    await self._drop(conn)
                    conn = None
                    failures = 1 if lived >= STABLE_CONNECTION_S else failures + 1
                    self._on_failure(info, failures, at_setup=False)
                    if failures > 1:
                        await asyncio.sleep(self._backoff(failures - 1))
                    continue
                if self._closed:
                    break
                conn = await self._switch(conn)
        finally:
            if conn is not None:
                await self._drop(conn)
            self._tools.cancel_all()

    async def _switch(self, conn: _Connection) -> _Connection | None:
        """goAway: a new connection resuming this one, made before breaking it where the model allows."""
        self.stats.goaways += 1
        make_first = not self._break_before_make
        self._listener.on_session_event("goaway_switch", {"make_before_break": make_first})
        began = self._switch_began = time.monotonic()  # no audio goes up until the replacement is ready
        replacement: _Connection | None = None
        if not make_first:
            await self._drop(conn)
        try:
            replacement = await self._open(replacement=make_first)
        except Exception as exc:
            logger.info("replacement connection failed (%s); reconnecting", closed(exc))
        if make_first:
            await self._drop(conn)
        if replacement is not None:
            gap_ms = (time.monotonic() - began) * 1000
            self.stats.switch_gaps_ms.append(round(gap_ms, 1))
            self._listener.on_session_event(
                "goaway_switched", {"gap_ms": round(gap_ms, 1), "make_before_break": make_first}
            )
        return replacement

    async def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _backoff(self, failures: int) -> float:
        return float(min(self._config.backoff_max_s, self._config.backoff_initial_s * 2 ** (failures - 1)))

    def _on_failure(self, info: Closed, failures: int, at_setup: bool) -> None:
        logger.warning("gemini connection lost (%s), failure %d", str(info)[:200], failures)
        reason = info.reason[:200]
        if at_setup and info.refused_request:
            # The same setup would be refused the same way: say which field, once.
            raise SessionEnded(f"gemini refused the session setup ({info.code}: {reason})")
        if info.code == 1008 and self._handle is None:
            raise SessionEnded(f"gemini refused the session: {reason}")
        if self._handle is not None and (info.code == 1008 or info.context_full):
            # A stale handle, or a context that is full: resuming would fail the same way again.
            self._handle = None
            self.stats.fresh_restarts += 1
            self._listener.on_session_event("fresh_session", {"code": info.code, "reason": reason})
        elif info.code == 1007 and self._handle is None and self._transcript:
            # A fresh session refused at once (a full context, or its seed): seed it with less, and
            # in the end with nothing, rather than the same again.
            keep = len(self._transcript) // 2
            self._transcript = self._transcript[len(self._transcript) - keep :] if keep else []
            self.stats.fresh_restarts += 1
            self._listener.on_session_event("seed_shrunk", {"turns": keep, "reason": reason})
        if failures > self._config.max_consecutive_failures:
            raise SessionEnded(f"gemini unavailable after {failures} attempts ({info.code}: {reason[:80]})")
        self._listener.on_session_event(
            "reconnecting", {"code": info.code, "reason": reason, "attempt": failures}
        )

    async def _open(self, replacement: bool = False) -> _Connection:
        stack = contextlib.AsyncExitStack()
        resuming = self._handle is not None
        seed = seed_turns(self._transcript) if not resuming else []
        config = connect_config(self._config, self._handle, seeding=bool(seed))
        try:
            live = await stack.enter_async_context(
                self._client.aio.live.connect(model=self._config.model, config=config)
            )
        except BaseException:
            await stack.aclose()
            raise
        conn = _Connection(live, stack, replacement)
        conn.audio = await BlobSender.for_session(live, "audio", INPUT_MIME)
        conn.video = await BlobSender.for_session(live, "video", VIDEO_MIME)
        self.stats.connections += 1
        if self.stats.connections > 1:
            self.stats.reconnects += 1
        if seed:
            try:
                # On 3.x the initial history must be complete (turnComplete) before any realtime input;
                # on 2.5 an incomplete turn only adds context without asking for an answer.
                await live.send_client_content(turns=seed, turn_complete=self._family == "3.x")
            except BaseException:
                await stack.aclose()
                raise
            conn.seeded = True
        # The resumed state ends at the handle: whatever was sent after it must be sent again.
        self._audio.replay()
        try:
            await self._tools.connected(live, resumed=resuming)
        except BaseException:
            await stack.aclose()
            raise
        if self._refused_switch_at is not None and self.stats.switch_gaps_ms:
            # The switch whose resume was refused ends only now: its gap includes the fallback.
            gap_ms = round((time.monotonic() - self._refused_switch_at) * 1000, 1)
            self._refused_switch_at = None
            self.stats.switch_gaps_ms[-1] = gap_ms
            self._listener.on_session_event(
                "goaway_switched", {"gap_ms": gap_ms, "make_before_break": True, "fallback": True}
            )
        # The new connection has not seen the picture: show it the newest frame with the first audio.
        self._video = self._latest_video
        setup = getattr(live, "setup_complete", None)
        session_id = getattr(setup, "session_id", None)
        if session_id:
            logger.info("gemini session %s (connection %d)", session_id, self.stats.connections)
        self._listener.on_session_event(
            "connected",
            {
                "resumed": resuming,
                "connection": self.stats.connections,
                "session_id": session_id,
                "seeded_turns": len(seed),
            },
        )
        return conn

    async def _drop(self, conn: _Connection) -> None:
        if conn.generating:
            # The cut-off turn will not complete on this connection; what was queued still plays.
            self._listener.on_turn_complete(cut=True)
        # websockets stops reading the socket while 16 messages wait unread, and then never reads the
        # close frame behind them: the close would wait out its 10 s timeout (a hang-up during a burst
        # of the model's reply, after a stalled loop). What is still queued is read and dropped.
        reading = asyncio.create_task(_read_until_closed(conn.live))
        try:
            with contextlib.suppress(Exception):
                await conn.exit_stack.aclose()
        finally:
            reading.cancel()

    async def _serve(self, conn: _Connection) -> None:
        """Pump both directions until goAway says to switch (returns) or the connection fails (raises)."""
        sender = asyncio.create_task(self._send_loop(conn))
        receiver = asyncio.create_task(self._receive_loop(conn))
        switch = asyncio.create_task(self._wait_for_switch(conn))
        tasks = {sender, receiver, switch}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _send_loop(self, conn: _Connection) -> None:
        while not self._closed:
            if self._greeting and self._caller_here:
                # Text in the realtime stream: how a 3.x model is asked to speak mid-session.
                await conn.live.send_realtime_input(text=greeting_text(self._greeting))
                self._greeting = None
                continue
            if not self._audio:
                if self._video is not None:
                    # Audio goes first: a frame is sent only when no audio chunk is waiting.
                    jpeg, self._video = self._video, None
                    await conn.video.send(jpeg)
                    self.stats.video_frames_sent += 1
                    self.stats.video_bytes_sent += len(jpeg)
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            # Never digital zeros (the outbox makes them comfort noise): 3.x does not end a turn on them.
            chunk, arrived_at = self._audio.next()
            if not chunk:  # the marker end_audio_stream() left
                await conn.live.send_realtime_input(audio_stream_end=True)
                self._audio.sent()
                continue
            await conn.audio.send(chunk)
            if arrived_at:
                self._listener.on_audio_sent(time.monotonic() - arrived_at)
            self._audio.sent()

    async def _wait_for_switch(self, conn: _Connection) -> None:
        while not self._closed:
            if conn.goaway_deadline is not None:
                left = conn.goaway_deadline - time.monotonic()
                if not conn.generating or left <= self._config.goaway_margin_s:
                    return
            await asyncio.sleep(0.05)

    async def _receive_loop(self, conn: _Connection) -> None:
        while True:
            async for message in conn.live.receive():
                self._dispatch(conn, message)
                # The socket may hold a burst of replies (the service sends faster than real time):
                # taken in one go they are one long step of the loop that every other call waits on.
                await asyncio.sleep(0)

    def _dispatch(self, conn: _Connection, message: types.LiveServerMessage) -> None:
        arrived_at = time.monotonic()
        content = message.server_content
        if content is not None:
            if content.model_turn is not None:
                for part in content.model_turn.parts or []:
                    if part.inline_data is not None and part.inline_data.data:
                        conn.generating = True
                        self._listener.on_model_audio(part.inline_data.data, arrived_at)
            if content.input_transcription is not None and content.input_transcription.text:
                self._record(
                    "user", content.input_transcription.text, bool(content.input_transcription.finished)
                )
            if content.output_transcription is not None and content.output_transcription.text:
                conn.generating = True
                self._record(
                    "model", content.output_transcription.text, bool(content.output_transcription.finished)
                )
            if content.grounding_metadata is not None:
                sources = grounding_sources(content.grounding_metadata)
                if sources:  # to the caller (a grounding event) and to the call's observers
                    queries = list(content.grounding_metadata.web_search_queries or [])
                    self._listener.on_grounding({"sources": sources, "queries": queries})
            if content.interrupted:
                conn.generating = False
                self._listener.on_interrupted()
            if content.turn_complete:
                conn.generating = False
                self._listener.on_turn_complete()
        if message.tool_call is not None:
            conn.generating = True
            for call in message.tool_call.function_calls or []:
                self._tools.start(call)
        if message.tool_call_cancellation is not None:
            for call_id in message.tool_call_cancellation.ids or []:
                self._tools.cancel(call_id)
        if message.session_resumption_update is not None:
            update = message.session_resumption_update
            if update.resumable and update.new_handle:
                self._handle = update.new_handle
                self._audio.handle_issued()
        if message.go_away is not None:
            left = parse_duration_s(message.go_away.time_left)
            conn.goaway_deadline = arrived_at + left
            self._listener.on_session_event("goaway", {"time_left_s": left})
        if message.usage_metadata is not None:
            count_usage(self.stats, message.usage_metadata)

    def _record(self, role: str, text: str, finished: bool) -> None:
        if self._transcript and self._transcript[-1][0] == role:
            self._transcript[-1] = (role, self._transcript[-1][1] + text)
        else:
            self._transcript.append((role, text))
        self._listener.on_transcript(role, text, finished)


def gemini_sessions(client: genai.Client, config: SessionConfig) -> SessionFactory:
    """The factory a worker makes each call's session with: one Gemini conversation per call."""

    def make(listener: SessionListener) -> GeminiSession:
        return GeminiSession(client, config, listener)

    return make


async def _read_until_closed(live: Any) -> None:
    socket = getattr(live, "_ws", None)  # the SDK's websocket (realtime_blob.py writes to it too)
    if socket is None:
        return
    with contextlib.suppress(Exception):  # ConnectionClosed, once the close frame is read
        while True:
            await socket.recv(decode=False)
