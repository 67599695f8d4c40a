"""The model's half of a connection: user turns in, echo replies out, barge-in, tool calls, usage.

`Replies` is mixed into LiveSession (session.py), which owns the socket and the reader; this half owns
the reply task and everything a reply leaves in the conversation's history.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .audio import INPUT_RATE, OUTPUT_RATE, Int16Array, array_to_pcm, chime, pcm_to_array, resample
from .config import SessionConfig
from .grounding import grounding_metadata
from .options import EmulatorOptions
from .protocol import CLOSE_INVALID_ARGUMENT, ProtocolError, encode_b64, pick
from .routes import Route
from .rules import ModelRules
from .state import ConnectionRecord, HistoryEntry, SessionState, audio_tokens, text_tokens
from .vision import SeenImage

SCHEDULING = ("SCHEDULING_UNSPECIFIED", "INTERRUPT", "WHEN_IDLE", "SILENT")


@dataclass
class UserTurn:
    pcm: bytes | None  # 16 kHz PCM16 of a spoken turn
    text: str | None  # a typed turn (realtimeInput.text or clientContent)
    number: int = 0  # 1-based turn number within the session (resumption continues it)
    tool_result: dict[str, Any] | None = None  # a NON_BLOCKING call's answer, spoken as its own turn

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


class Replies:
    # Provided by LiveSession.
    config: SessionConfig
    rules: ModelRules
    state: SessionState
    record: ConnectionRecord
    route: Route
    _closed: bool
    _msg_index: int
    _last_seen: SeenImage | None

    @property
    def options(self) -> EmulatorOptions:
        raise NotImplementedError

    async def _send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    async def _drop(self) -> None:
        raise NotImplementedError

    def _issue_handle(self) -> str:
        raise NotImplementedError

    def _init_replies(self) -> None:
        self._queue: deque[UserTurn] = deque()
        self._reply_task: asyncio.Task[None] | None = None
        self._progress: ReplyProgress | None = None
        self._tool_wait: asyncio.Future[list[dict[str, Any]]] | None = None
        self._tool_answers: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ turns

    async def _user_activity(self) -> None:
        """The user started speaking (or typed): barge in on a reply that is still playing."""
        task = self._reply_task
        if task is None or task.done() or not self.config.interrupts or self._closed:
            return
        progress = self._progress
        if progress is None or progress.finishing:
            return
        await self._interrupt(task, progress)

    async def _interrupt(self, task: asyncio.Task[None], progress: ReplyProgress) -> None:
        task.cancel()
        await asyncio.wait([task])
        self._reply_task = None
        self._progress = None
        self._tool_wait = None
        if progress.pending_tool_ids:
            for call_id in progress.pending_tool_ids:
                self.state.pending_calls.pop(call_id, None)
            await self._send({"toolCallCancellation": {"ids": list(progress.pending_tool_ids)}})
        await self._send({"serverContent": {"interrupted": True}})
        # Only what was sent is in the model's history, heard or not.
        self._remember_reply(progress, self._output_text(progress, None))
        self.record.interruptions += 1
        await self._send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage()})
        await self._after_turn()
        if self._queue:  # a turn that came while the cut reply played (a tool answer that interrupts)
            self._reply_task = asyncio.create_task(self._reply_loop())

    def _commit(self, turn: UserTurn) -> None:
        self.state.turns += 1
        turn.number = self.state.turns
        if turn.pcm is not None:
            tokens = audio_tokens(turn.seconds, self.options.audio_tokens_per_s)
            self.state.history.append(HistoryEntry("user", self._input_text(turn), tokens, "AUDIO"))
        elif turn.tool_result is None:
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
        limit = self.options.context_token_limit
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
        if turn.tool_result is not None:
            return _tool_text(turn.tool_result)
        if turn.pcm is None:
            text = f"[echo] {turn.text or ''}".rstrip()
        else:
            text = f"[echo of user speech {progress.sent_samples / OUTPUT_RATE:.1f} s]"
        if self._last_seen is not None:
            text += f" {self._last_seen.describe()}"
        for result in tool_results or []:
            text += f" {_tool_text(result)}"
        return text

    def _remember_reply(self, progress: ReplyProgress, text: str) -> int:
        if self.config.text_replies:
            tokens, modality = text_tokens(text), "TEXT"
        else:
            seconds = progress.sent_samples / OUTPUT_RATE
            tokens, modality = audio_tokens(seconds, self.options.audio_tokens_per_s), "AUDIO"
        self.state.history.append(HistoryEntry("model", text, tokens, modality))
        return tokens

    def _usage(self, finished: bool = True) -> dict[str, Any]:
        """usageMetadata of the turn just finished (or, not `finished`, begun): the context was its prompt."""
        history = self.state.history
        response = history[-1].tokens if finished and history and history[-1].role == "model" else 0
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
        if self.config.resumption:
            if self.options.resumable_false:
                await self._send({"sessionResumptionUpdate": {"resumable": False}})
            else:
                handle = self._issue_handle()
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

    # ------------------------------------------------------------------ tools

    def _tool_to_call(self, turn: UserTurn) -> str | None:
        opts = self.options
        names = self.config.function_names
        if opts.tool_call is None or not names or turn.tool_result is not None:
            return None
        if opts.tool_call_turns is not None and turn.number not in opts.tool_call_turns:
            return None
        if opts.tool_call in ("", "*"):
            return names[0]
        return opts.tool_call if opts.tool_call in names else None

    def _blocking(self, name: str) -> bool:
        cfg = self.config
        if not self.rules.non_blocking_tools:
            return True  # 2.5: every call waits for its answer, whatever the declaration says
        return name in cfg.blocking_functions

    async def _on_tool_response(self, body: dict[str, Any]) -> None:
        responses = pick(body, "function_responses", []) or []
        if not isinstance(responses, list):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid value at 'tool_response.function_responses'")
        for i, response in enumerate(responses):
            if not isinstance(response, dict):
                continue
            scheduling = pick(response, "scheduling")
            where = f"tool_response.function_responses[{i}]"
            if scheduling is not None and self.route.endpoint == "vertex":
                # Vertex AI's FunctionResponse has no such field.
                raise ProtocolError(
                    CLOSE_INVALID_ARGUMENT,
                    f"Invalid JSON payload received. Unknown name \"scheduling\" at '{where}': "
                    "Cannot find field.",
                )
            if scheduling is not None and scheduling not in SCHEDULING:
                raise ProtocolError(
                    CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}.scheduling': {scheduling!r}"
                )
            self.record.tool_responses.append(response)
            rid = str(pick(response, "id"))
            progress = self._progress
            if rid in self.state.pending_calls:
                self.state.pending_calls.pop(rid)
                if progress is not None and rid in progress.pending_tool_ids:
                    progress.pending_tool_ids.remove(rid)
                await self._on_background_answer(response, scheduling or "WHEN_IDLE")
            elif progress is not None and rid in progress.pending_tool_ids:
                self._tool_answers[rid] = response
        progress = self._progress
        waiter = self._tool_wait
        if (
            progress is not None
            and waiter is not None
            and not waiter.done()
            and all(i in self._tool_answers for i in progress.pending_tool_ids)
        ):
            waiter.set_result([self._tool_answers[i] for i in progress.pending_tool_ids])

    async def _on_background_answer(self, response: dict[str, Any], scheduling: str) -> None:
        """A NON_BLOCKING call answered: spoken when idle, at once, or only remembered."""
        text = _tool_text(response)
        self.state.history.append(HistoryEntry("user", text, text_tokens(text), "TEXT"))
        if scheduling == "SILENT":
            self._check_context()
            return
        self._queue.append(UserTurn(pcm=None, text=None, tool_result=response))
        task, progress = self._reply_task, self._progress
        if task is not None and not task.done():
            if scheduling == "INTERRUPT" and progress is not None and not progress.finishing:
                await self._interrupt(task, progress)
            return  # WHEN_IDLE: the reply loop takes it after the reply in flight
        self._reply_task = asyncio.create_task(self._reply_loop())

    async def _call_tool(self, progress: ReplyProgress, name: str) -> list[dict[str, Any]] | None:
        opts = self.options
        call_id = f"function-call-{secrets.randbelow(10**19)}"
        call = {"id": call_id, "name": name, "args": dict(opts.tool_call_args)}
        progress.pending_tool_ids = [call_id]
        self.record.tool_calls.append(call)
        if not self._blocking(name):
            # The model speaks on; the answer comes when it comes (cancelled if the user cuts this reply).
            self.state.pending_calls[call_id] = call
            await self._send({"toolCall": {"functionCalls": [call]}})
            return None
        self._tool_answers = {}
        self._tool_wait = asyncio.get_running_loop().create_future()
        await self._send({"toolCall": {"functionCalls": [call]}})
        results = await self._tool_wait
        self._tool_wait = None
        progress.pending_tool_ids = []
        return results

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

    async def _reply(self, progress: ReplyProgress) -> None:
        opts = self.options
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

        name = self._tool_to_call(turn)
        tool_results = await self._call_tool(progress, name) if name is not None else None

        if self.rules.usage_only_content:
            # 3.1 sends these mid-turn; a client that takes "no content" for the turn's end loses the audio.
            await self._send({"serverContent": {}, "usageMetadata": self._usage(finished=False)})
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
        await self._send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage()})
        await self._after_turn()

    async def _stream_reply(
        self,
        progress: ReplyProgress,
        samples: Int16Array,
        tool_results: list[dict[str, Any]] | None,
        drop: bool,
    ) -> float | None:
        """Send the reply in chunks, faster than real time; returns when the first chunk went."""
        opts = self.options
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


def _tool_text(result: dict[str, Any]) -> str:
    payload = json.dumps(pick(result, "response"), sort_keys=True, separators=(",", ":"))
    return f"[tool {pick(result, 'name')} returned {payload}]"
