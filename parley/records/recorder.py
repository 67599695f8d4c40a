"""The recorder: a `CallObserver` that turns what a call reports into record writes.

It keeps, per live call, only the utterance being spoken and a few numbers; each finished utterance,
tool call and timeline event is queued for the database at once, so a call's transcript survives a
crash of the process, and nothing grows with the length of a call except the per-turn latencies.
Everything here returns at once: the writes go through `RecordWriter`'s queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley.agent.observer import CallObserver, CallView, Measure
from parley.records.cost import Prices, estimate_cost
from parley.records.shape import present
from parley.records.store import CallEvents, CallUpdate, Write

# Told "call.started" / "call.ended" with the call's record as the API shows it (webhooks listen here).
Announce = Callable[[str, dict[str, Any]], object]

MAX_RESULT_CHARS = 2000  # tool results are kept truncated to this many characters of JSON
MAX_TEXT_CHARS = 20000  # one utterance
TIMELINE_SESSION_EVENTS = frozenset(
    {"goaway", "goaway_switch", "reconnecting", "fresh_session", "tool_cancelled"}
)


@dataclass
class _Utterance:
    at: float
    text: str = ""


@dataclass
class _Live:
    columns: dict[str, Any] = field(default_factory=dict)  # what is known of the row so far
    seq: int = 0
    speaking: dict[str, _Utterance] = field(default_factory=dict)
    connected_at: float | None = None
    response_ms: list[int] = field(default_factory=list)
    bargein_ms: list[float] = field(default_factory=list)
    voice_to_voice_ms: list[float] = field(default_factory=list)


def truncated(value: Any, limit: int = MAX_RESULT_CHARS) -> Any:
    """`value` as it is when its JSON is short, else the JSON text cut to `limit` characters."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= limit:
        return value
    return text[:limit] + "…"


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p95": at(0.95), "count": len(ordered)}


class CallRecorder(CallObserver):
    def __init__(
        self,
        submit: Callable[[Write], bool],
        worker: str,
        model: str | None,
        prices: Prices,
        recording: Callable[[str], str | None] = lambda call_id: None,
        clock: Callable[[], float] = time.time,
        announce: Announce | None = None,
    ) -> None:
        self._announce = announce
        self._submit = submit
        self.worker = worker
        self.model = model
        self.prices = prices
        self._recording = recording  # the recording's file name for a call, when recordings are on
        self._clock = clock
        self._live: dict[str, _Live] = {}

    # --- the CallObserver door ------------------------------------------------------------------

    def call_started(self, call: CallView) -> None:
        head = call.summary()  # once per call: which agent profile and model it was made with
        caller = call.options.caller  # the page's origin; the client's address only when it is kept
        columns: dict[str, Any] = {
            "worker": self.worker,
            "agent": head.get("agent"),
            "model": head.get("model") or self.model,
            "origin": caller.get("origin"),
            "client_address": caller.get("client_address"),
            "started_at": self._clock(),
        }
        recording = self._recording(call.id)
        if recording is not None:
            columns["recording"] = recording
        self._live[call.id] = _Live(columns=dict(columns))
        self._submit(CallUpdate(call.id, columns))
        if self._announce is not None:
            self._announce("call.started", present({"id": call.id, **columns}, full=False))

    def call_state(self, call: CallView, state: str) -> None:
        live = self._live.get(call.id)
        if live is not None and state == "active" and live.connected_at is None:
            live.connected_at = live.columns["connected_at"] = self._clock()
            self._submit(CallUpdate(call.id, {"connected_at": live.connected_at}))

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        live = self._live.get(call.id)
        if live is not None and measure is Measure.BARGEIN_STOP:
            live.bargein_ms.append(round(seconds * 1000, 1))

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        live = self._live.get(call.id)
        if live is None:
            return
        now = self._clock()
        if kind == "transcript":
            role = str(fields.get("role", "agent"))
            utterance = live.speaking.setdefault(role, _Utterance(now))
            if len(utterance.text) < MAX_TEXT_CHARS:
                utterance.text += str(fields.get("text", ""))
            if fields.get("final") and role == "user":
                self._finish(call.id, live, role)
        elif kind == "user_speech_start":
            live.speaking.setdefault("user", _Utterance(now))
        elif kind == "agent_turn_start":
            self._finish(call.id, live, "user")
            response_ms = fields.get("response_ms")
            if isinstance(response_ms, int | float):
                live.response_ms.append(int(response_ms))
            self._event(
                call.id,
                live,
                now,
                "turn_start",
                data={"turn": fields.get("turn"), "response_ms": response_ms},
            )
        elif kind == "interrupted":
            self._event(call.id, live, now, "interrupted", data=dict(fields))
        elif kind == "agent_turn_end":
            interrupted = bool(fields.get("interrupted"))
            self._finish(call.id, live, "agent", interrupted)
            self._event(call.id, live, now, "turn_end", interrupted=interrupted, data=dict(fields))
        elif kind == "session":
            event = str(fields.get("event", ""))
            if event == "tool_call":
                self._event(call.id, live, now, "tool_call", data=dict(fields))
            elif event in TIMELINE_SESSION_EVENTS or event.startswith("connect"):
                self._event(call.id, live, now, event[:32], data=dict(fields))
        elif kind == "tool_result":
            data = {
                **fields,
                "result": truncated(fields.get("result")),
                "args": truncated(fields.get("args")),
            }
            self._event(call.id, live, now, "tool_result", data=data)
        elif kind == "grounding":
            self._event(call.id, live, now, "grounding", data={"sources": fields.get("sources", [])[:20]})
        elif kind == "client_stats":
            v2v = fields.get("voice_to_voice_ms")
            if isinstance(v2v, int | float) and len(live.voice_to_voice_ms) < 10000:
                live.voice_to_voice_ms.append(float(v2v))

    def call_ended(self, call: CallView) -> None:
        live = self._live.pop(call.id, None)
        if live is None:
            return
        for role in list(live.speaking):
            self._finish(call.id, live, role)
        columns = self.final_columns(call.summary(), call.end_reason, live)
        self._submit(CallUpdate(call.id, columns))
        if self._announce is not None:
            self._announce("call.ended", present({"id": call.id, **live.columns, **columns}, full=True))

    # --- rows -------------------------------------------------------------------------------------

    def final_columns(self, summary: dict[str, Any], end_reason: str | None, live: _Live) -> dict[str, Any]:
        gemini = summary.get("gemini") or {}
        tokens = dict(gemini.get("tokens") or {})
        # Without a per-modality breakdown, Live tokens are audio both ways.
        if not tokens.get("input") and tokens.get("prompt"):
            tokens["input"] = {"AUDIO": tokens["prompt"]}
        if not tokens.get("output") and tokens.get("response"):
            tokens["output"] = {"AUDIO": tokens["response"]}
        latency_ms = summary.get("latency_ms") or {}
        latency = {
            "uplink": _pick(latency_ms.get("uplink")),
            "downlink": _pick(latency_ms.get("downlink")),
            "bargein_stop": _quantiles(live.bargein_ms),
            "bargein_stop_ms": live.bargein_ms[-200:],
            "response": _quantiles([float(v) for v in live.response_ms]),
            "response_ms": live.response_ms[-500:],
            "voice_to_voice": _quantiles(live.voice_to_voice_ms),
        }
        model = summary.get("model") or self.model
        columns: dict[str, Any] = {
            "ended_at": self._clock(),
            "duration_s": summary.get("seconds"),
            "end_reason": end_reason,
            "turns": summary.get("turns"),
            "rejoins": summary.get("rejoins"),
            "connections": gemini.get("connections"),
            "goaways": gemini.get("goaways"),
            "reconnects": gemini.get("reconnects"),
            "fresh_sessions": gemini.get("fresh_restarts"),
            "tool_calls": gemini.get("tool_calls"),
            "tokens": tokens,
            "cost_usd": estimate_cost(self.prices, model, tokens),
            "latency": latency,
            "summary": summary,
        }
        if summary.get("agent"):
            columns["agent"] = summary["agent"]
        if model:  # the call's agent profile may name another model than the process's
            columns["model"] = model
        return columns

    def _finish(self, call_id: str, live: _Live, role: str, interrupted: bool = False) -> None:
        utterance = live.speaking.pop(role, None)
        if utterance is None or not utterance.text.strip():
            return
        self._event(
            call_id,
            live,
            utterance.at,
            "utterance",
            role=role,
            text=utterance.text.strip(),
            interrupted=interrupted if role == "agent" else None,
        )

    def _event(
        self,
        call_id: str,
        live: _Live,
        at: float,
        kind: str,
        role: str | None = None,
        text: str | None = None,
        interrupted: bool | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        live.seq += 1
        row = {
            "call_id": call_id,
            "seq": live.seq,
            "at": at,
            "kind": kind,
            "role": role,
            "text": text,
            "interrupted": interrupted,
            "data": data,
        }
        self._submit(CallEvents([row]))


def _pick(stats: Any) -> dict[str, Any] | None:
    if not isinstance(stats, dict):
        return None
    return {k: stats[k] for k in ("p50", "p95", "max", "count") if k in stats}
