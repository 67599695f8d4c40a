"""Each call as an OpenTelemetry trace, from what the call reports through the `CallObserver` door.

    call                 the whole call (parley.call.id, parley.end_reason, parley.turns, ...)
      setup              offer taken -> answer given
      gemini.connection  one per Live connection, with goaway / goaway_switch / reconnecting /
                         fresh_session events; a reconnect ends one and the next "connected" opens another
      turn               end of the user's speech (or the agent's turn start when the local VAD heard no
                         end) -> the turn's end, with a `first_audio` event at the agent's first audio,
                         parley.response_ms and parley.interrupted
      tool               tool call -> its result (or its cancellation)

Spans are made on the event loop (a few microseconds each, a handful per turn) and exported by the
SDK's BatchSpanProcessor on its own thread, over OTLP/HTTP to the standard OTEL_EXPORTER_OTLP_* endpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from parley.agent.observer import CallObserver, CallView

SESSION_EVENTS = frozenset({"goaway", "goaway_switch", "reconnecting", "fresh_session"})


def make_provider(service_version: str) -> TracerProvider:
    """A provider of our own (not the global one), exporting over OTLP/HTTP as the OTEL_* variables say."""
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "parley"), "service.version": service_version}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


@dataclass
class _CallSpans:
    root: Span
    context: Any
    setup: Span | None = None
    connection: Span | None = None
    turn: Span | None = None
    speech_ended_ns: int | None = None
    tools: dict[str, Span] = field(default_factory=dict)


class CallTracer(CallObserver):
    def __init__(self, provider: TracerProvider, worker: str) -> None:
        self.provider = provider
        self.worker = worker
        self._tracer = provider.get_tracer("parley")
        self._calls: dict[str, _CallSpans] = {}

    def _child(
        self,
        spans: _CallSpans,
        name: str,
        start_ns: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        return self._tracer.start_span(
            name, context=spans.context, start_time=start_ns or time.time_ns(), attributes=attributes
        )

    def call_started(self, call: CallView) -> None:
        now = time.time_ns()
        root = self._tracer.start_span(
            "call", start_time=now, attributes={"parley.call.id": call.id, "parley.worker": self.worker}
        )
        spans = _CallSpans(root, trace.set_span_in_context(root))
        spans.setup = self._child(spans, "setup", now)
        self._calls[call.id] = spans

    def call_state(self, call: CallView, state: str) -> None:
        spans = self._calls.get(call.id)
        if spans is not None and spans.setup is not None and state in ("connecting", "ending"):
            spans.setup.set_attribute("parley.answered", state == "connecting")
            spans.setup.end()
            spans.setup = None

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        spans = self._calls.get(call.id)
        if spans is None:
            return
        if kind == "session":
            self._session_event(spans, str(fields.get("event", "")), fields)
        elif kind == "user_speech_end":
            spans.speech_ended_ns = time.time_ns()
        elif kind == "agent_turn_start":
            start = spans.speech_ended_ns or time.time_ns()
            spans.speech_ended_ns = None
            if spans.turn is not None:
                spans.turn.end()
            spans.turn = self._child(spans, "turn", start, {"parley.turn": int(fields.get("turn") or 0)})
            spans.turn.add_event("first_audio")
            if isinstance(fields.get("response_ms"), int | float):
                spans.turn.set_attribute("parley.response_ms", fields["response_ms"])
        elif kind == "interrupted" and spans.turn is not None:
            spans.turn.add_event("interrupted", {"parley.source": str(fields.get("source", ""))})
        elif kind == "agent_turn_end" and spans.turn is not None:
            spans.turn.set_attribute("parley.interrupted", bool(fields.get("interrupted")))
            spans.turn.end()
            spans.turn = None
        elif kind == "tool_result":
            tool = spans.tools.pop(str(fields.get("id", "")), None)
            if tool is not None:
                tool.end()

    def _session_event(self, spans: _CallSpans, event: str, fields: dict[str, Any]) -> None:
        if event == "connected":
            if spans.connection is not None:
                spans.connection.end()
            spans.connection = self._child(
                spans, "gemini.connection", None, {"parley.resumed": bool(fields.get("resumed"))}
            )
        elif event in SESSION_EVENTS and spans.connection is not None:
            attributes = {
                f"parley.{k}": v for k, v in fields.items() if isinstance(v, str | int | float | bool)
            }
            spans.connection.add_event(event, attributes)
            if event == "reconnecting":
                spans.connection.set_status(Status(StatusCode.ERROR, f"closed: {fields.get('code')}"))
                spans.connection.end()
                spans.connection = None
        elif event == "tool_call":
            call_id = str(fields.get("id", ""))
            spans.tools[call_id] = self._child(
                spans, "tool", None, {"parley.tool": str(fields.get("name", ""))}
            )
        elif event == "tool_cancelled":
            tool = spans.tools.pop(str(fields.get("id", "")), None)
            if tool is not None:
                tool.set_status(Status(StatusCode.ERROR, "cancelled"))
                tool.end()

    def call_ended(self, call: CallView) -> None:
        spans = self._calls.pop(call.id, None)
        if spans is None:
            return
        for span in (spans.setup, spans.connection, spans.turn, *spans.tools.values()):
            if span is not None:
                span.end()
        summary = call.summary()
        gemini = summary.get("gemini") or {}
        spans.root.set_attributes(
            {
                "parley.end_reason": call.end_reason or "unknown",
                "parley.turns": int(summary.get("turns") or 0),
                "parley.rejoins": int(summary.get("rejoins") or 0),
                "parley.gemini.connections": int(gemini.get("connections") or 0),
                "parley.gemini.reconnects": int(gemini.get("reconnects") or 0),
            }
        )
        spans.root.end()

    def shutdown(self) -> None:
        """Export what is left (blocking: call it from a thread)."""
        self.provider.shutdown()
