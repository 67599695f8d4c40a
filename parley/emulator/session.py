"""One Live connection: setup, user-turn detection, echo replies, barge-in, faults.

Tasks per connection:
- the reader (the aiohttp handler itself) parses client messages in order and feeds the
  turn detector; barge-in is decided here, synchronously with the audio that caused it;
- a reply task answers queued user turns one after another and can be cancelled by
  barge-in;
- a clock task sends goAway, ends the connection at its lifetime and fires timed faults.
All sends go through one lock so frames of different tasks never interleave.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from .audio import INPUT_RATE, OUTPUT_RATE, Int16Array, array_to_pcm, chime, pcm_to_array, resample
from .grounding import grounding_metadata, wants_search
from .options import EmulatorOptions
from .protocol import (
    CLOSE_INVALID_ARGUMENT,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    ProtocolError,
    close_reason,
    content_text,
    dumps,
    duration_string,
    encode_b64,
    has,
    parse_client_message,
    parse_realtime_input,
    pick,
    pick_path,
)
from .routes import Route
from .state import ConnectionRecord, HistoryEntry, SessionState, SessionStore, audio_tokens, text_tokens
from .turns import SpeechEnded, SpeechStarted, TurnDetector, TurnEvent
from .vad import config_for
from .vision import BadImage, SeenImage, inspect_jpeg, tokens_per_frame

log = logging.getLogger("emulator.session")

# What the service says when a connection reaches its lifetime (gRPC CANCELLED -> 1000).
LIFETIME_REASON = "operation was cancelled"


class Host(Protocol):
    """What a session needs from the emulator that owns it."""

    options: EmulatorOptions
    store: SessionStore

    def count_audio(self, seconds: float) -> None: ...


@dataclass
class UserTurn:
    pcm: bytes | None  # 16 kHz PCM16 of a spoken turn
    text: str | None  # a typed turn (realtimeInput.text or clientContent)
    number: int = 0  # 1-based turn number within the session (resumption continues it)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / INPUT_RATE if self.pcm else 0.0


@dataclass
class ReplyProgress:
    """How far the reply in flight got: what barge-in must account for and cancel."""

    turn: UserTurn
    sent_samples: int = 0  # 24 kHz reply samples already sent
    pending_tool_ids: list[str] = field(default_factory=list)
    finishing: bool = False  # turnComplete is being sent: too late to interrupt


@dataclass
class SessionConfig:
    """The parts of setup the emulator acts on."""

    automatic_activity: bool = True
    interrupts: bool = True  # activityHandling != NO_INTERRUPTION
    input_transcription: bool = False
    output_transcription: bool = False
    text_replies: bool = False  # responseModalities is TEXT only
    resumption: bool = False
    compression_trigger: int | None = None  # tokens; None: compression off
    compression_target: int = 0
    explicit_vad_signal: bool = False
    function_names: list[str] = field(default_factory=list)
    tokens_per_frame: int = 256  # by generationConfig.mediaResolution
    google_search: bool = False  # grounded replies carry groundingMetadata


def _int(value: Any, where: str) -> int:
    # int64 fields arrive as JSON strings in protobuf JSON; int32 as numbers.
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}': {value!r}") from None


def _function_names(tools: Any) -> list[str]:
    names: list[str] = []
    if not isinstance(tools, list):
        return names
    for tool in tools:
        for decl in pick(tool, "function_declarations", []) or []:
            name = pick(decl, "name")
            if isinstance(name, str):
                names.append(name)
    return names


class LiveSession:
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
        self._detector: TurnDetector | None = None
        self._queue: deque[UserTurn] = deque()
        self._reply_task: asyncio.Task[None] | None = None
        self._progress: ReplyProgress | None = None
        self._tool_wait: asyncio.Future[list[dict[str, Any]]] | None = None
        self._tool_answers: dict[str, dict[str, Any]] = {}
        self._pending_text: list[str] = []
        self._clock_task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[Any] | None = None  # the task sending our close frame
        self._last_seen: SeenImage | None = None  # the newest video frame, for the reply to describe

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            if not await self._setup():
                return
            self._clock_task = asyncio.create_task(self._clock())
            await self._read_loop()
        except ProtocolError as exc:
            log.info("closing %s: %s %s", self.record.path, exc.code, exc.reason)
            await self.close(exc.code, exc.reason)
        finally:
            for task in (self._clock_task, self._reply_task):
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
        opts = self.host.options
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
        self._configure(setup, opts)

        resumption = pick(setup, "session_resumption")
        handle = pick(resumption, "handle")
        if handle:
            self.record.resumption_handle = str(handle)
            restored = None if opts.refuse_resumption else self.host.store.restore(str(handle))
            if restored is None:
                raise ProtocolError(
                    CLOSE_POLICY, "Session not found: the resumption handle is unknown or expired"
                )
            self.state = restored
            self.record.resumed = True
        self.record.session_id = self.state.session_id

        complete: dict[str, Any] = {}
        if self.route.endpoint == "vertex":
            complete["sessionId"] = self.state.session_id
        await self._send({"setupComplete": complete})
        return True

    def _configure(self, setup: dict[str, Any], opts: EmulatorOptions) -> None:
        cfg = self.config
        ric = pick(setup, "realtime_input_config")
        aad = pick(ric, "automatic_activity_detection")
        cfg.automatic_activity = not bool(pick(aad, "disabled", False))
        cfg.interrupts = pick(ric, "activity_handling") != "NO_INTERRUPTION"
        silence = _int(pick(aad, "silence_duration_ms", opts.vad_silence_ms), "silence_duration_ms")
        prefix = _int(pick(aad, "prefix_padding_ms", opts.vad_prefix_padding_ms), "prefix_padding_ms")
        vad = config_for(
            opts.vad_threshold_dbfs,
            silence_ms=silence,
            start_ms=prefix,
            start_sensitivity=pick(aad, "start_of_speech_sensitivity"),
            end_sensitivity=pick(aad, "end_of_speech_sensitivity"),
        )
        # Keep at least 100 ms before the committing speech run so word onsets survive.
        self._detector = TurnDetector(cfg.automatic_activity, vad, preroll_ms=max(prefix, 100))
        cfg.input_transcription = has(setup, "input_audio_transcription")
        cfg.output_transcription = has(setup, "output_audio_transcription")
        modalities = pick_path(setup, "generation_config", "response_modalities") or pick(
            setup, "response_modalities"
        )
        if isinstance(modalities, list):
            upper = [str(m).upper() for m in modalities]
            cfg.text_replies = "TEXT" in upper and "AUDIO" not in upper
        cfg.resumption = pick(setup, "session_resumption") is not None
        cwc = pick(setup, "context_window_compression")
        if cwc is not None:
            trigger = pick(cwc, "trigger_tokens")
            # Documented defaults: trigger at 80% of the context window, slide down to half the trigger.
            default_trigger = int(opts.context_token_limit * 0.8)
            cfg.compression_trigger = (
                _int(trigger, "trigger_tokens") if trigger is not None else default_trigger
            )
            target = pick_path(cwc, "sliding_window", "target_tokens")
            cfg.compression_target = (
                _int(target, "target_tokens") if target is not None else cfg.compression_trigger // 2
            )
        # Vertex only: the SDK refuses explicitVadSignal for the Developer API.
        cfg.explicit_vad_signal = self.route.endpoint == "vertex" and bool(
            pick(setup, "explicit_vad_signal", False)
        )
        cfg.function_names = _function_names(pick(setup, "tools"))
        cfg.google_search = wants_search(pick(setup, "tools"))
        cfg.tokens_per_frame = tokens_per_frame(pick_path(setup, "generation_config", "media_resolution"))

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
                self._on_tool_response(body)
            elif kind == "context_update":
                tools = pick(body, "tools")
                tools = pick(tools, "tools", tools)  # the SDK nests it: tools.tools[]
                if tools is not None:
                    self.config.function_names = _function_names(tools)

    async def _on_realtime_input(self, body: dict[str, Any]) -> None:
        ri = parse_realtime_input(body)
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
        text = content_text(pick(body, "turns"))
        if text:
            self._pending_text.append(text)
        if bool(pick(body, "turn_complete", False)):
            # On current models a complete client turn interrupts generation, like speech.
            await self._user_activity()
            joined = " ".join(self._pending_text)
            self._pending_text = []
            self._commit(UserTurn(pcm=None, text=joined))

    def _on_tool_response(self, body: dict[str, Any]) -> None:
        responses = pick(body, "function_responses", []) or []
        if not isinstance(responses, list):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid value at 'tool_response.function_responses'")
        for response in responses:
            if isinstance(response, dict):
                self.record.tool_responses.append(response)
                rid = pick(response, "id")
                progress = self._progress
                if progress is not None and rid in progress.pending_tool_ids:
                    self._tool_answers[str(rid)] = response
        progress = self._progress
        waiter = self._tool_wait
        if (
            progress is not None
            and waiter is not None
            and not waiter.done()
            and all(i in self._tool_answers for i in progress.pending_tool_ids)
        ):
            waiter.set_result([self._tool_answers[i] for i in progress.pending_tool_ids])

    # ------------------------------------------------------------------ turns

    async def _user_activity(self) -> None:
        """The user started speaking (or typed): barge in on a reply that is still playing."""
        task = self._reply_task
        if task is None or task.done() or not self.config.interrupts or self._closed:
            return
        progress = self._progress
        if progress is None or progress.finishing:
            return
        task.cancel()
        await asyncio.wait([task])
        self._reply_task = None
        self._progress = None
        self._tool_wait = None
        if progress.pending_tool_ids:
            await self._send({"toolCallCancellation": {"ids": list(progress.pending_tool_ids)}})
        await self._send({"serverContent": {"interrupted": True}})
        # Only what was sent is in the model's history, heard or not.
        self._remember_reply(progress, self._output_text(progress, None))
        self.record.interruptions += 1
        await self._send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(progress)})
        await self._after_turn()

    def _commit(self, turn: UserTurn) -> None:
        opts = self.host.options
        self.state.turns += 1
        turn.number = self.state.turns
        if turn.pcm is not None:
            tokens = audio_tokens(turn.seconds, opts.audio_tokens_per_s)
            self.state.history.append(HistoryEntry("user", self._input_text(turn), tokens, "AUDIO"))
        else:
            text = turn.text or ""
            self.state.history.append(HistoryEntry("user", text, text_tokens(text), "TEXT"))
        self._check_context()
        self._queue.append(turn)
        if self._reply_task is None or self._reply_task.done():
            self._reply_task = asyncio.create_task(self._reply_loop())

    def _check_context(self) -> None:
        cfg = self.config
        tokens = self.state.context_tokens
        if cfg.compression_trigger is not None:
            if tokens > cfg.compression_trigger:
                self.state.compress(cfg.compression_target)
            return
        limit = self.host.options.context_token_limit
        if tokens > limit:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT,
                f"Context window exhausted: {tokens} tokens exceed the limit of {limit}. "
                "Enable context window compression.",
            )

    @staticmethod
    def _input_text(turn: UserTurn) -> str:
        return f"[user speech {turn.seconds:.1f} s]"

    def _output_text(self, progress: ReplyProgress, tool_results: list[dict[str, Any]] | None) -> str:
        turn = progress.turn
        if turn.pcm is None:
            text = f"[echo] {turn.text or ''}".rstrip()
        else:
            text = f"[echo of user speech {progress.sent_samples / OUTPUT_RATE:.1f} s]"
        if self._last_seen is not None:
            text += f" {self._last_seen.describe()}"
        for result in tool_results or []:
            payload = json.dumps(pick(result, "response"), sort_keys=True, separators=(",", ":"))
            text += f" [tool {pick(result, 'name')} returned {payload}]"
        return text

    def _remember_reply(self, progress: ReplyProgress, text: str) -> int:
        opts = self.host.options
        if self.config.text_replies:
            tokens, modality = text_tokens(text), "TEXT"
        else:
            seconds = progress.sent_samples / OUTPUT_RATE
            tokens, modality = audio_tokens(seconds, opts.audio_tokens_per_s), "AUDIO"
        self.state.history.append(HistoryEntry("model", text, tokens, modality))
        return tokens

    def _usage(self, progress: ReplyProgress) -> dict[str, Any]:
        """usageMetadata of the turn just finished: the whole context was its prompt."""
        history = self.state.history
        response = history[-1].tokens if history and history[-1].role == "model" else 0
        prompt = self.state.context_tokens - response
        prompt_details: dict[str, int] = {}
        for entry in history[:-1] if response else history:
            prompt_details[entry.modality] = prompt_details.get(entry.modality, 0) + entry.tokens
        response_modality = "TEXT" if self.config.text_replies else "AUDIO"
        # The Vertex wire names the response "candidates" (the SDK maps it to response_*).
        name = "candidates" if self.route.endpoint == "vertex" else "response"
        return {
            "promptTokenCount": prompt,
            f"{name}TokenCount": response,
            "totalTokenCount": prompt + response,
            "promptTokensDetails": [
                {"modality": m, "tokenCount": n} for m, n in sorted(prompt_details.items())
            ],
            f"{name}TokensDetails": [{"modality": response_modality, "tokenCount": response}],
        }

    async def _after_turn(self) -> None:
        """A model turn ended: issue a resumption handle and enforce the context window."""
        opts = self.host.options
        if self.config.resumption:
            if opts.resumable_false:
                await self._send({"sessionResumptionUpdate": {"resumable": False}})
            else:
                handle = self.host.store.issue(self.state, opts.handle_ttl_s)
                self.record.handles_issued.append(handle)
                await self._send(
                    {
                        "sessionResumptionUpdate": {
                            "newHandle": handle,
                            "resumable": True,
                            "lastConsumedClientMessageIndex": str(self._msg_index),
                        }
                    }
                )
        self._check_context()

    # ------------------------------------------------------------------ replies

    async def _reply_loop(self) -> None:
        try:
            while self._queue and not self._closed:
                turn = self._queue.popleft()
                self._progress = ReplyProgress(turn=turn)
                await self._reply(self._progress)
                self._progress = None
        except ProtocolError as exc:
            await self.close(exc.code, exc.reason)

    def _tool_to_call(self, turn: UserTurn) -> str | None:
        opts = self.host.options
        names = self.config.function_names
        if opts.tool_call is None or not names:
            return None
        if opts.tool_call_turns is not None and turn.number not in opts.tool_call_turns:
            return None
        if opts.tool_call in ("", "*"):
            return names[0]
        return opts.tool_call if opts.tool_call in names else None

    async def _reply(self, progress: ReplyProgress) -> None:
        opts = self.host.options
        cfg = self.config
        turn = progress.turn
        began = time.monotonic()
        if turn.pcm is not None:
            # ~100 ms of numpy for a 5 s turn: on a thread, or every call sharing this loop (the
            # emulator runs inside `parley serve`) would stall for it at each turn
            samples = await asyncio.to_thread(resample, pcm_to_array(turn.pcm), INPUT_RATE, OUTPUT_RATE)
        else:
            samples = chime(OUTPUT_RATE)
        if cfg.input_transcription and turn.pcm is not None:
            text = self._input_text(turn)
            await self._send({"serverContent": {"inputTranscription": {"text": text, "finished": True}}})
        # The reply delay counts from the end of the user's turn, resampling included.
        await asyncio.sleep(max(0.0, opts.reply_delay_s - (time.monotonic() - began)))
        if cfg.resumption:
            # While the model is generating the session cannot be resumed.
            await self._send({"sessionResumptionUpdate": {"resumable": False}})

        tool_results: list[dict[str, Any]] | None = None
        name = self._tool_to_call(turn)
        if name is not None:
            call_id = f"function-call-{secrets.randbelow(10**19)}"
            call = {"id": call_id, "name": name, "args": dict(opts.tool_call_args)}
            progress.pending_tool_ids = [call_id]
            self._tool_answers = {}
            self._tool_wait = asyncio.get_running_loop().create_future()
            self.record.tool_calls.append(call)
            await self._send({"toolCall": {"functionCalls": [call]}})
            tool_results = await self._tool_wait
            self._tool_wait = None
            progress.pending_tool_ids = []

        drop = opts.drop_after_turns is not None and self.record.turns_answered >= opts.drop_after_turns
        started = await self._stream_reply(progress, samples, tool_results, drop)
        if started is None:
            return  # dropped

        audio_s = samples.size / OUTPUT_RATE
        out_text = self._output_text(progress, tool_results)
        if cfg.output_transcription and not cfg.text_replies:
            await self._send({"serverContent": {"outputTranscription": {"text": out_text, "finished": True}}})
        if cfg.google_search:
            query = turn.text or self._input_text(turn)
            await self._send({"serverContent": {"groundingMetadata": grounding_metadata(query)}})
        await self._send({"serverContent": {"generationComplete": True}})
        # The model assumes real-time playback: turnComplete waits until the client has
        # played the reply, and until then the user can still barge in.
        playback_end = started + audio_s / max(opts.playout_speed, 1e-6)
        await asyncio.sleep(max(0.0, playback_end - time.monotonic()))
        progress.finishing = True
        self._remember_reply(progress, out_text)
        self.record.turns_answered += 1
        await self._send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(progress)})
        await self._after_turn()

    async def _stream_reply(
        self,
        progress: ReplyProgress,
        samples: Int16Array,
        tool_results: list[dict[str, Any]] | None,
        drop: bool,
    ) -> float | None:
        """Send the reply in chunks, faster than real time; returns when the first chunk went."""
        opts = self.host.options
        started = time.monotonic()
        if self.config.text_replies:
            progress.sent_samples = samples.size  # the text stands for the whole echo
            text = self._output_text(progress, tool_results)
            await self._send({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": text}]}}})
            if drop:
                await self._drop()
                return None
            return started
        chunk = max(1, int(OUTPUT_RATE * max(1, opts.reply_chunk_ms) / 1000))
        speed = max(opts.reply_speed, 1e-6)
        for i, offset in enumerate(range(0, samples.size, chunk)):
            due = started + (offset / OUTPUT_RATE) / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            piece = samples[offset : offset + chunk]
            data = encode_b64(array_to_pcm(piece))
            part = {"inlineData": {"mimeType": f"audio/pcm;rate={OUTPUT_RATE}", "data": data}}
            await self._send({"serverContent": {"modelTurn": {"role": "model", "parts": [part]}}})
            progress.sent_samples += piece.size
            if drop and i == 0:
                await self._drop()
                return None
        return started

    # ------------------------------------------------------------------ clock

    async def _clock(self) -> None:
        """goAway before the lifetime, the lifetime's end, and timed faults."""
        opts = self.host.options
        now = time.monotonic()
        lifetime = max(0.0, opts.lifetime_s)
        end_at = now + lifetime
        # Clamped to half the lifetime, so a short lifetime does not mean a goAway at once.
        goaway_at: float | None = end_at - min(max(0.0, opts.goaway_lead_s), lifetime / 2)
        fault_goaway_at = now + opts.goaway_after_s if opts.goaway_after_s is not None else None
        fault_time_left = opts.goaway_time_left_s
        drop_at = now + opts.drop_after_s if opts.drop_after_s is not None else None
        while not self._closed:
            pending = [t for t in (goaway_at, fault_goaway_at, drop_at, end_at) if t is not None]
            next_at = min(pending)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            if drop_at is not None and now >= drop_at:
                await self._drop()
                return
            if fault_goaway_at is not None and now >= fault_goaway_at:
                fault_goaway_at = None
                if fault_time_left is not None:
                    end_at = now + max(0.0, fault_time_left)
                    goaway_at = None  # this goAway is the warning for the new end
                await self._go_away(end_at - now)
            if goaway_at is not None and now >= goaway_at:
                goaway_at = None
                await self._go_away(end_at - now)
            if now >= end_at:
                await self.close(CLOSE_NORMAL, LIFETIME_REASON)
                return

    async def _go_away(self, time_left: float) -> None:
        self.record.go_aways += 1
        await self._send({"goAway": {"timeLeft": duration_string(round(max(0.0, time_left), 3))}})
