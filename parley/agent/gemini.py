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
- a stale handle (1008) or an exhausted context (1007) starts a fresh session seeded with the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from typing import Any

from google import genai
from google.genai import errors, types
from websockets.exceptions import ConnectionClosed

from parley.agent.live_config import SessionConfig, greeting_text, shape_setup
from parley.agent.session import SessionEnded, SessionFactory, SessionListener, SessionStats
from parley.agent.usage import add_modalities, grounding_sources

logger = logging.getLogger(__name__)

INPUT_MIME = "audio/pcm;rate=16000"
VIDEO_MIME = "image/jpeg"
INPUT_BYTES_PER_SECOND = 16000 * 2
STABLE_CONNECTION_S = 10.0


class _Connection:
    """Per-connection state: made new for every connection so no flag survives a reconnect."""

    def __init__(self, live: Any, exit_stack: contextlib.AsyncExitStack) -> None:
        self.live = live
        self.exit_stack = exit_stack
        self.opened_at = time.monotonic()
        self.generating = False
        self.goaway_deadline: float | None = None
        self.tool_tasks: dict[str, asyncio.Task[None]] = {}


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
        self._chunk_bytes = max(2, INPUT_BYTES_PER_SECOND * config.uplink_chunk_ms // 1000) & ~1
        self._resend_limit = int(config.resend_buffer_s * INPUT_BYTES_PER_SECOND)
        self._partial = bytearray()
        self._partial_arrived_at = 0.0
        # (chunk, when its first packet arrived): the arrival time measures the uplink's added latency.
        self._outbox: deque[tuple[bytes, float]] = deque()
        self._outbox_bytes = 0
        self._since_handle: deque[bytes] = deque()
        self._since_handle_bytes = 0
        self._wake = asyncio.Event()
        self._video: bytes | None = None  # the newest JPEG not yet sent: a slot, never a queue
        self._latest_video: bytes | None = None  # what a new connection is shown at once
        self._handle: str | None = None
        self._transcript: list[tuple[str, str]] = []
        self._closed = False
        # Said once, when the caller is there to hear it (a reconnect carries on the conversation).
        self._greeting = config.greeting
        self._caller_here = False
        self.stats = SessionStats()
        self.live_audio = False  # Gemini speaks in bursts, ahead of playout

    # --- the uplink's door -------------------------------------------------------------------

    def send_audio(self, pcm: bytes, arrived_at: float) -> None:
        """Queue caller PCM (16 kHz mono s16); never blocks, whatever the connection is doing."""
        if not self._partial:
            self._partial_arrived_at = arrived_at
        self._partial += pcm
        while len(self._partial) >= self._chunk_bytes:
            chunk = bytes(self._partial[: self._chunk_bytes])
            del self._partial[: self._chunk_bytes]
            self._outbox.append((chunk, self._partial_arrived_at))
            self._outbox_bytes += len(chunk)
            self._partial_arrived_at = arrived_at
        self._trim()
        self._wake.set()

    def send_video(self, jpeg: bytes) -> None:
        """Show Gemini a JPEG still. Only the newest waits; it goes when no audio is waiting."""
        self._video = self._latest_video = jpeg
        self._wake.set()

    def end_audio_stream(self) -> None:
        """The caller paused: send what is buffered, then `audioStreamEnd` so Gemini ends the turn."""
        if self._partial:
            self._outbox.append((bytes(self._partial), self._partial_arrived_at))
            self._outbox_bytes += len(self._partial)
            self._partial.clear()
        self._outbox.append((b"", 0.0))
        self._wake.set()

    def caller_connected(self) -> None:
        self._caller_here = True
        self._wake.set()

    def _trim(self) -> None:
        # The two buffers together hold at most resend_buffer_s: the oldest audio goes first.
        while self._since_handle and self._since_handle_bytes + self._outbox_bytes > self._resend_limit:
            self._since_handle_bytes -= len(self._since_handle.popleft())
        while self._outbox and self._outbox_bytes > self._resend_limit:
            dropped, _ = self._outbox.popleft()
            self._outbox_bytes -= len(dropped)
            self.stats.audio_bytes_dropped += len(dropped)

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the conversation until `close()`; raises SessionEnded when it cannot go on."""
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
                        self._on_failure(exc, failures)
                        await asyncio.sleep(self._backoff(failures))
                        continue
                try:
                    await self._serve(conn)
                except Exception as exc:
                    # A connection that opens and dies at once counts against the limit like one that
                    # never opened; one that held for a while starts the count afresh.
                    lived = time.monotonic() - conn.opened_at
                    await self._drop(conn)
                    conn = None
                    failures = 1 if lived >= STABLE_CONNECTION_S else failures + 1
                    self._on_failure(exc, failures)
                    if failures > 1:
                        await asyncio.sleep(self._backoff(failures - 1))
                    continue
                if self._closed:
                    break
                # goAway: make the next connection before breaking this one.
                self.stats.goaways += 1
                self._listener.on_session_event("goaway_switch", {})
                try:
                    replacement = await self._open()
                except Exception as exc:
                    logger.info("replacement connection failed (%s); reconnecting after closing", exc)
                    replacement = None
                await self._drop(conn)
                conn = replacement
        finally:
            if conn is not None:
                await self._drop(conn)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _backoff(self, failures: int) -> float:
        return float(min(self._config.backoff_max_s, self._config.backoff_initial_s * 2 ** (failures - 1)))

    def _on_failure(self, exc: BaseException, failures: int) -> None:
        code = exc.code if isinstance(exc, errors.APIError) else None
        message = str(exc.message if isinstance(exc, errors.APIError) else exc) or type(exc).__name__
        logger.warning("gemini connection lost (code %s: %s), failure %d", code, message[:200], failures)
        if code == 1008 and self._handle is None:
            raise SessionEnded(f"gemini refused the session: {message[:200]}")
        if code in (1007, 1008) and self._handle is not None:
            # A stale handle, or a context that is full: resuming would fail the same way again.
            self._handle = None
            self.stats.fresh_restarts += 1
            self._listener.on_session_event("fresh_session", {"code": code})
        elif code == 1007:
            # A fresh session whose context is full right away: seed it with less.
            self._transcript = self._transcript[len(self._transcript) // 2 :]
            self.stats.fresh_restarts += 1
        if failures > self._config.max_consecutive_failures:
            raise SessionEnded(f"gemini unavailable after {failures} attempts ({code or message[:80]})")
        self._listener.on_session_event("reconnecting", {"code": code, "attempt": failures})

    def _connect_config(self) -> types.LiveConnectConfig:
        cfg = self._config
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            speech_config=types.SpeechConfig(
                voice_config=types.VoiceConfig(
                    prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=cfg.voice)
                )
            ),
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
            session_resumption=types.SessionResumptionConfig(handle=self._handle),
        )
        if cfg.system_instruction:
            config.system_instruction = types.Content(parts=[types.Part(text=cfg.system_instruction)])
        if cfg.media_resolution:
            config.media_resolution = types.MediaResolution(
                f"MEDIA_RESOLUTION_{cfg.media_resolution.upper()}"
            )
        if cfg.context_compression:
            config.context_window_compression = types.ContextWindowCompressionConfig(
                sliding_window=types.SlidingWindow()
            )
        declarations = cfg.tools.declarations()
        if declarations:
            config.tools = [types.Tool(function_declarations=declarations)]
        shape_setup(config, cfg)
        return config

    async def _open(self) -> _Connection:
        stack = contextlib.AsyncExitStack()
        resuming = self._handle is not None
        try:
            live = await stack.enter_async_context(
                self._client.aio.live.connect(model=self._config.model, config=self._connect_config())
            )
        except BaseException:
            await stack.aclose()
            raise
        conn = _Connection(live, stack)
        self.stats.connections += 1
        if self.stats.connections > 1:
            self.stats.reconnects += 1
        if not resuming and self._transcript:
            await self._seed_transcript(live)
        # The resumed state ends at the handle: whatever was sent after it must be sent again.
        if self._since_handle:
            self.stats.audio_bytes_resent += self._since_handle_bytes
            self._outbox.extendleft((chunk, 0.0) for chunk in reversed(self._since_handle))
            self._outbox_bytes += self._since_handle_bytes
            self._since_handle.clear()
            self._since_handle_bytes = 0
        # The new connection has not seen the picture: show it the newest frame with the first audio.
        self._video = self._latest_video
        self._listener.on_session_event(
            "connected", {"resumed": resuming, "connection": self.stats.connections}
        )
        return conn

    async def _seed_transcript(self, live: Any) -> None:
        turns = [
            types.Content(role="user" if role == "user" else "model", parts=[types.Part(text=text)])
            for role, text in self._transcript
            if text
        ]
        if turns:
            await live.send_client_content(turns=turns, turn_complete=False)

    async def _drop(self, conn: _Connection) -> None:
        for task in conn.tool_tasks.values():
            task.cancel()
        if conn.generating:
            # The cut-off turn will not complete on this connection; what was queued still plays.
            self._listener.on_turn_complete(cut=True)
        with contextlib.suppress(Exception):
            await conn.exit_stack.aclose()

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
            if not self._outbox:
                if self._video is not None:
                    # Audio goes first: a frame is sent only when no audio chunk is waiting.
                    jpeg, self._video = self._video, None
                    await conn.live.send_realtime_input(video=types.Blob(data=jpeg, mime_type=VIDEO_MIME))
                    self.stats.video_frames_sent += 1
                    self.stats.video_bytes_sent += len(jpeg)
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk, arrived_at = self._outbox[0]
            if not chunk:  # the marker end_audio_stream() left
                await conn.live.send_realtime_input(audio_stream_end=True)
                self._outbox.popleft()
                continue
            await conn.live.send_realtime_input(audio=types.Blob(data=chunk, mime_type=INPUT_MIME))
            if arrived_at:
                self._listener.on_audio_sent(time.monotonic() - arrived_at)
            self._outbox.popleft()
            self._outbox_bytes -= len(chunk)
            self._since_handle.append(chunk)
            self._since_handle_bytes += len(chunk)
            self.stats.audio_bytes_sent += len(chunk)
            self._trim()

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
                self._start_tool(conn, call)
        if message.tool_call_cancellation is not None:
            for call_id in message.tool_call_cancellation.ids or []:
                task = conn.tool_tasks.pop(call_id, None)
                if task is not None:
                    task.cancel()
                    self._listener.on_session_event("tool_cancelled", {"id": call_id})
        if message.session_resumption_update is not None:
            update = message.session_resumption_update
            if update.resumable and update.new_handle:
                self._handle = update.new_handle
                self._since_handle.clear()
                self._since_handle_bytes = 0
        if message.go_away is not None:
            left = parse_duration_s(message.go_away.time_left)
            conn.goaway_deadline = arrived_at + left
            self._listener.on_session_event("goaway", {"time_left_s": left})
        if message.usage_metadata is not None:
            usage = message.usage_metadata
            self.stats.prompt_tokens += usage.prompt_token_count or 0
            self.stats.response_tokens += usage.response_token_count or 0
            self.stats.total_tokens += usage.total_token_count or 0
            for detail in usage.prompt_tokens_details or []:
                if detail.modality in (types.MediaModality.VIDEO, types.MediaModality.IMAGE):
                    self.stats.video_tokens_reported += detail.token_count or 0
            add_modalities(self.stats.input_tokens, usage.prompt_tokens_details)
            add_modalities(self.stats.output_tokens, usage.response_tokens_details)

    def _record(self, role: str, text: str, finished: bool) -> None:
        if self._transcript and self._transcript[-1][0] == role:
            self._transcript[-1] = (role, self._transcript[-1][1] + text)
        else:
            self._transcript.append((role, text))
        self._listener.on_transcript(role, text, finished)

    def _start_tool(self, conn: _Connection, call: types.FunctionCall) -> None:
        call_id = call.id or ""
        self.stats.tool_calls += 1
        self._listener.on_session_event("tool_call", {"id": call_id, "name": call.name})

        async def run_tool() -> None:
            result = await self._config.tools.call(
                call.name or "", call.args or {}, self._config.tool_timeout_s, self._config.context
            )
            conn.tool_tasks.pop(call_id, None)
            self._listener.on_observed(
                "tool_result", {"id": call_id, "name": call.name, "args": call.args or {}, "result": result}
            )
            try:
                await conn.live.send_tool_response(
                    function_responses=[
                        types.FunctionResponse(id=call_id or None, name=call.name, response=result)
                    ]
                )
            except (errors.APIError, ConnectionClosed) as exc:
                logger.info("tool %s answered after its connection closed: %s", call.name, exc)

        conn.tool_tasks[call_id] = asyncio.create_task(run_tool())


def gemini_sessions(client: genai.Client, config: SessionConfig) -> SessionFactory:
    """The factory a worker makes each call's session with: one Gemini conversation per call."""

    def make(listener: SessionListener) -> GeminiSession:
        return GeminiSession(client, config, listener)

    return make
