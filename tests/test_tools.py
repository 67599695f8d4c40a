"""Tools: declarations from plain functions, calls with timeouts and errors the model can speak about."""

from __future__ import annotations

import asyncio
import time

from parley.agent.tools import ToolRegistry, default_registry, load_tool_module


def test_declarations_come_from_names_docstrings_and_annotations() -> None:
    tools = ToolRegistry()

    @tools.register
    def book_table(restaurant: str, people: int, outside: bool = False) -> dict[str, str]:
        """Book a table."""
        return {}

    (declaration,) = tools.declarations()
    assert declaration.name == "book_table" and declaration.description == "Book a table."
    assert declaration.parameters is not None and declaration.parameters.properties is not None
    kinds = {
        name: schema.type.value for name, schema in declaration.parameters.properties.items() if schema.type
    }
    assert kinds == {"restaurant": "STRING", "people": "INTEGER", "outside": "BOOLEAN"}
    assert declaration.parameters.required == ["restaurant", "people"]


async def test_sync_and_async_tools_run_concurrently_with_timeouts_and_errors() -> None:
    tools = ToolRegistry()

    @tools.register
    def slow_sync(seconds: float) -> dict[str, float]:
        time.sleep(seconds)
        return {"slept": seconds}

    @tools.register
    async def slow_async(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @tools.register
    def broken() -> None:
        raise RuntimeError("secret internals")

    started = time.monotonic()
    results = await asyncio.gather(
        tools.call("slow_sync", {"seconds": 0.3}, timeout_s=2),
        tools.call("slow_async", {"seconds": 0.3}, timeout_s=2),
        tools.call("slow_async", {"seconds": 5}, timeout_s=0.2),
        tools.call("broken", {}, timeout_s=2),
        tools.call("missing", {}, timeout_s=2),
    )
    assert time.monotonic() - started < 1.0  # concurrently, not one after another
    assert results[0] == {"slept": 0.3} and results[1] == {"result": "done"}
    assert "timed out" in results[2]["error"]
    assert results[3] == {"error": "broken failed: RuntimeError"}  # no internals leak to the model
    assert "no tool named" in results[4]["error"]


async def test_the_example_tool_is_offered_when_asked_for() -> None:
    load_tool_module("parley.agent.example_tools")
    assert "current_time" in default_registry.names()
    answer = await default_registry.call("current_time", {}, timeout_s=2)
    assert answer["utc"].startswith("20")
