"""One Live connection: setup, the reader, the clock, faults; replies live in replies.py.

Tasks per connection:
- the reader (the aiohttp handler itself) parses client messages in order and feeds the
  turn detector; barge-in is decided here, synchronously with the audio that caused it;
- a reply task (replies.py) answers queued user turns one after another and can be cancelled by
  barge-in;
- a clock task sends goAway, ends the connection at its lifetime and fires timed faults.
All sends go through one lock so frames of different tasks never interleave. What the model family
allows (rules.py) is decided once, from the setup's model name.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import uuid
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from .audio import INPUT_RATE, array_to_pcm, pcm_to_array, resample
from .clock import LIFETIME_REASON, go_away, run_clock
from .config import SessionConfig, configure, read_tools
from .options import EmulatorOptions
from .protocol import (
    CLOSE_INTERNAL,
    CLOSE_INVALID_ARGUMENT,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    ProtocolError,
    close_reason,
    content_text,
    dumps,
    parse_client_message,
    parse_realtime_input,
    pick,
)
from .replies import Replies, UserTurn
from .routes import Route
from .rules import RULES, ModelRules, check_setup, rules_for
from .state import ConnectionRecord, HistoryEntry, SessionState, SessionStore, text_tokens
from .turns import SpeechEnded, SpeechStarted, TurnDetector, TurnEvent
from .vision import BadImage, SeenImage, inspect_jpeg

log = logging.getLogger("emulator.session")

HISTORY_ONLY = (
    "Invalid argument: client_content is only accepted as initial history, before any realtime input "
    "and with history_config.initial_history_in_client_content set; send text as realtime_input.text."
)


class Host(Protocol):
    """What a session needs from the emulator that owns it."""

    options: EmulatorOptions
    store: SessionStore

    def count_audio(self, seconds: float) -> None: ...


class LiveSession(Replies):
    def __init__(
        self,
        host: Host,
        ws: web.WebSocketResponse,
        request: web.Request,
        route: Route,
        record: ConnectionRecord,
    ) -> None:
        self.host = host
        self.ws = ws
        self.route = route
        self.record = record
        self._transport = request.transport
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._msg_index = -1  # index of the last client message read; setup is 0
        self.state = SessionState(session_id=uuid.uuid4().hex)
        self.config = SessionConfig()
        self.rules: ModelRules = RULES["2.5"]
        self._detector: TurnDetector | None = None
        self._init_replies()
        self._pending_text: list[str] = []
        self._realtime_seen = False  # any realtimeInput yet: initial history is over
        self._history_closed = False  # the initial history's turnComplete came
        self._history_open = False  # initial history begun but not yet complete
        self._clock_task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[Any] | None = None  # the task sending our close frame
        self._last_seen: SeenImage | None = None  # the newest video frame, for the reply to describe

    @property
    def options(self) -> EmulatorOptions:
        # Read at each decision, so a test can change a fault between turns.
        return self.host.options

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: dict[str, Any]) -> None:
        await self._send(message)

    async def drop(self) -> None:
        await self._drop()

    async def go_away_now(self, time_left_s: float) -> None:
        """A goAway now, and the end it announces (what GeminiEmulator.go_away asks every session for)."""
        if self._clock_task is None or self._closed:
            return  # still in setup: nothing may come before setupComplete
        await go_away(self, time_left_s)

        async def end() -> None:
            await asyncio.sleep(time_left_s)
            await self.close(CLOSE_NORMAL, LIFETIME_REASON)

        self._timers.add(asyncio.create_task(end()))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            if not await self._setup():
                return
            self._clock_task = asyncio.create_task(run_clock(self))
            await self._read_loop()
        except ProtocolError as exc:
            log.info("closing %s: %s %s", self.record.path, exc.code, exc.reason)
            await self.close(exc.code, exc.reason)
        finally:
            for task in (self._clock_task, self._reply_task, *self._timers):
                # A task that is sending our close frame finishes the closing handshake.
                if task is not None and task is not asyncio.current_task() and task is not self._closer:
                    task.cancel()
            closer = self._closer
            if closer is not None and closer is not asyncio.current_task() and not closer.done():
                await asyncio.wait([closer], timeout=5.0)
            if not self._closed:
                self._closed = True
                self.record.closed_by = "client"
            self.record.ended_at = time.time()

    async def close(self, code: int, reason: str) -> None:
        """Close with a close frame: how the service reports every error and the lifetime end."""
        if self._closed:
            return
        self._closed = True
        self._closer = asyncio.current_task()
        self.record.close_code = code
        self.record.close_reason = reason
        self.record.closed_by = "server"
        try:
            await self.ws.close(code=code, message=close_reason(reason).encode("utf-8"))
        except (ConnectionError, RuntimeError):
            pass

    def abort(self) -> None:
        """Drop the connection with no close frame; the client reports 1006."""
        if self._closed:
            return
        self._closed = True
        self.record.close_code = 1006
        self.record.close_reason = "aborted"
        self.record.closed_by = "server"
        if self._transport is not None:
            self._transport.abort()

    async def _drop(self) -> None:
        opts = self.options
        log.info("fault: dropping %s with %s", self.record.path, opts.drop_code or "abort")
        if opts.drop_code is None:
            self.abort()
        else:
            await self.close(opts.drop_code, opts.drop_reason)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            return
        async with self._send_lock:
            if self._closed:
                return
            try:
                await self.ws.send_bytes(dumps(message))
            except (ConnectionError, RuntimeError):
                pass  # the client is gone; the reader sees the close and ends the session

    # ------------------------------------------------------------------ setup

    async def _next_message(self) -> tuple[str, dict[str, Any]] | None:
        """The next client message, or None when the client has gone."""
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._msg_index += 1
                self.record.client_messages += 1
                return parse_client_message(msg.data)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                # Gone from now on, so a resume of this connection's handle is no longer concurrent.
                if self.record.closed_by is None:
                    self.record.closed_by = "client"
                return None

    async def _setup(self) -> bool:
        first = await self._next_message()
        if first is None:
            return False
        kind, setup = first
        if kind != "setup":
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid request: the first message must be setup.")
        opts = self.host.options
        self.record.setup = setup
        model = pick(setup, "model")
        self.record.model = model if isinstance(model, str) else None
        if not isinstance(model, str) or not model:
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid argument: setup.model is required.")
        if not any(fnmatch.fnmatchcase(model, pat) for pat in opts.model_patterns):
            raise ProtocolError(
                CLOSE_POLICY,
                f"{model} is not found for API version {self.route.api_version}, "
                "or is not supported for bidiGenerateContent.",
            )
        try:
            self.rules = rules_for(model, opts)
        except ValueError as exc:
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid argument: {exc}") from None
        self.record.rules = self.rules.family
        check_setup(setup, self.rules, self.route.endpoint, model)
        self.config, self._detector = configure(setup, opts, self.route.endpoint)
        self._detector.needs_real_audio = self.rules.trailing_audio_required

        resumption = pick(setup, "session_resumption")
        handle = pick(resumption, "handle")
        concurrent = False
        if handle:
            self.record.resumption_handle = str(handle)
            restored = None if opts.refuse_resumption else self.host.store.restore(str(handle))
            if restored is None:
                raise ProtocolError(
                    CLOSE_POLICY, "Session not found: the resumption handle is unknown or expired"
                )
            owner = self.host.store.owner(str(handle))
            concurrent = owner is not None and owner.closed_by is None
            self.state = restored
            self.record.resumed = True
        self.record.session_id = self.state.session_id

        complete: dict[str, Any] = {}
        if self.route.endpoint == "vertex" or self.rules.family == "3.x":
            complete["sessionId"] = self.state.session_id
        await self._send({"setupComplete": complete})
        if concurrent and self.rules.refuse_concurrent_resume:
            # Reported for 3.x: the resume is accepted, then fails while the old connection lives.
            self.record.concurrent_resume_refused = True
            await asyncio.sleep(max(0.0, opts.concurrent_resume_fails_after_s))
            await self.close(CLOSE_INTERNAL, "Internal error encountered.")
            return False
        return True

    def _issue_handle(self) -> str:
        handle = self.host.store.issue(self.state, self.options.handle_ttl_s, owner=self.record)
        self.record.handles_issued.append(handle)
        return handle

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        while not self._closed:
            message = await self._next_message()
            if message is None:
                return
            kind, body = message
            if kind == "setup":
                raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid request: setup may only be sent once.")
            if kind == "realtime_input":
                await self._on_realtime_input(body)
            elif kind == "client_content":
                await self._on_client_content(body)
            elif kind == "tool_response":
                await self._on_tool_response(body)
            elif kind == "context_update":
                tools = pick(body, "tools")
                tools = pick(tools, "tools", tools)  # the SDK nests it: tools.tools[]
                if tools is not None:
                    read_tools(self.config, tools)

    async def _on_realtime_input(self, body: dict[str, Any]) -> None:
        ri = parse_realtime_input(body)
        if self._history_open and self.rules.history_only_client_content:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT,
                "Invalid argument: the initial history must end with turn_complete=true "
                "before realtime input.",
            )
        self._realtime_seen = True
        detector = self._detector
        assert detector is not None
        if (ri.activity_start or ri.activity_end) and detector.automatic:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT,
                "Explicit activity control is not supported when automatic activity detection is enabled.",
            )
        events: list[TurnEvent] = []
        if ri.activity_start:
            events += detector.activity_start()
        for chunk in ri.audio:
            self.record.audio_bytes_received += len(chunk.pcm)
            self.record.zero_chunks_received += not any(chunk.pcm)
            self.host.count_audio(len(chunk.pcm) / 2 / chunk.rate)
            pcm = chunk.pcm
            if chunk.rate != INPUT_RATE:
                pcm = array_to_pcm(resample(pcm_to_array(pcm), chunk.rate, INPUT_RATE))
            events += detector.feed(pcm)
        for i, image in enumerate(ri.images):
            self._see(image, i)
        if ri.activity_end:
            events += detector.activity_end()
        if ri.audio_stream_end:
            events += detector.stream_end()
        for event in events:
            await self._on_turn_event(event)
        if ri.text is not None:
            await self._user_activity()
            self._commit(UserTurn(pcm=None, text=ri.text))

    def _see(self, jpeg: bytes, index: int) -> None:
        """A video frame: check it decodes, count its tokens into the context, remember what it shows."""
        try:
            seen = inspect_jpeg(jpeg, time.time())
        except BadImage as exc:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT, f"Invalid image at 'realtime_input.video': {exc}"
            ) from None
        self.record.images.append(seen)
        self._last_seen = seen
        tokens = self.config.tokens_per_frame
        history = self.state.history
        if history and history[-1].modality == "VIDEO":  # consecutive frames: one entry
            history[-1].tokens += tokens
        else:
            history.append(HistoryEntry("user", "[video]", tokens, "VIDEO"))
        self._check_context()

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, SpeechStarted):
            if self.config.explicit_vad_signal:
                await self._send({"voiceActivityDetectionSignal": {"vadSignalType": "VAD_SIGNAL_TYPE_SOS"}})
            await self._user_activity()
        elif isinstance(event, SpeechEnded):
            if self.config.explicit_vad_signal:
                await self._send({"voiceActivityDetectionSignal": {"vadSignalType": "VAD_SIGNAL_TYPE_EOS"}})
            if event.pcm:
                self._commit(UserTurn(pcm=event.pcm, text=None))

    async def _on_client_content(self, body: dict[str, Any]) -> None:
        if self.rules.history_only_client_content:
            self._on_initial_history(body)
            return
        text = content_text(pick(body, "turns"))
        if text:
            self._pending_text.append(text)
        if bool(pick(body, "turn_complete", False)):
            # On current models a complete client turn interrupts generation, like speech.
            await self._user_activity()
            joined = " ".join(self._pending_text)
            self._pending_text = []
            self._commit(UserTurn(pcm=None, text=joined))

    def _on_initial_history(self, body: dict[str, Any]) -> None:
        """3.x: clientContent seeds the history before anything else, and is never answered."""
        if not self.config.initial_history or self._realtime_seen or self._history_closed:
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, HISTORY_ONLY)
        turns = pick(body, "turns", [])
        for turn in turns if isinstance(turns, list) else [turns]:
            role = "model" if pick(turn, "role") == "model" else "user"
            text = content_text([turn])
            if text:
                self.state.history.append(HistoryEntry(role, text, text_tokens(text), "TEXT"))
                self.record.initial_history.append((role, text))
        self._history_open = True
        if bool(pick(body, "turn_complete", False)):
            self._history_open = False
            self._history_closed = True
        self._check_context()
