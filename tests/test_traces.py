"""Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, each call is a trace that a real OTLP/HTTP receiver gets
(set-up, the Gemini connection, the turn, the tool call under one call span); the same call's record
carries the tool call and its result. Without the variable, no tracer exists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from parley.agent.tools import ToolRegistry
from parley.emulator.server import EmulatorOptions, GeminiEmulator
from parley.server import start
from tests.conftest import make_settings
from tests.test_records import get, talk
from tests.waiting import wait_until


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    spans: list[Any] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", spans
    finally:
        await runner.cleanup()


@pytest.fixture
async def tool_emulator() -> AsyncIterator[GeminiEmulator]:
    emu = GeminiEmulator(options=EmulatorOptions(tool_call="*", tool_call_args={"city": "Lyon"}))
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


async def test_a_call_is_one_trace_with_setup_connection_turn_and_tool_spans(
    tool_emulator: GeminiEmulator,
    otlp_receiver: tuple[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    endpoint, spans = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    tools = ToolRegistry()

    @tools.register
    def weather(city: str) -> dict[str, str]:
        """The weather in a city."""
        return {"city": city, "sky": "clear " * 1000}  # a long result: the record keeps it cut

    settings = make_settings(database_url=f"sqlite:///{tmp_path}/r.db")
    running = await start(settings, tools=tools, emulator=tool_emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        assert running.tracer is not None
        call_id = await talk(url)
        await wait_until(lambda: not running.worker.calls, 10, "the call to end")
        await wait_until(lambda: any(s.name == "call" for s in spans), 20, "the call's span to be exported")
        status, transcript = await get(f"{url}/v1/calls/{call_id}/transcript")
    finally:
        await running.stop()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (call,) = by_name["call"]
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["parley.call.id"].string_value == call_id
    assert attributes["parley.end_reason"].string_value == "hangup"
    for name in ("setup", "gemini.connection", "turn", "tool"):
        assert by_name.get(name), (name, sorted(by_name))
        for span in by_name[name]:
            assert span.trace_id == call.trace_id and span.parent_span_id == call.span_id
            assert call.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
    (setup,) = by_name["setup"]
    assert setup.end_time_unix_nano - setup.start_time_unix_nano < 5e9
    assert "first_audio" in [e.name for e in by_name["turn"][0].events]
    tool_attributes = {a.key: a.value.string_value for a in by_name["tool"][0].attributes}
    assert tool_attributes["parley.tool"] == "weather"

    assert status == 200
    kinds = [e["kind"] for e in transcript["transcript"]]
    assert "tool_call" in kinds and "tool_result" in kinds
    result = next(e for e in transcript["transcript"] if e["kind"] == "tool_result")
    assert result["name"] == "weather" and result["args"] == {"city": "Lyon"}
    assert isinstance(result["result"], str) and len(result["result"]) <= 2001  # cut, as JSON text


async def test_without_the_otel_variables_no_tracer_runs(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(), emulator=emulator)
    try:
        assert running.tracer is None
    finally:
        await running.stop()
