"""Agent profiles from the browser: the page's `/?agent=NAME` with Google Search grounding shown under the
caption, and the widget's `agent` attribute with `data-var-*` variables on another site."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import expect

from parley.emulator.protocol import pick
from parley.emulator.server import GeminiEmulator
from tests.browser.conftest import Pages, start_server
from tests.waiting import wait_until

AGENTS = """
[agents.support]
system_instruction = "Support for {{customer_name}}, order {{order_id}}."
variables = {{ customer_name = 40, order_id = 12 }}
allowed_origins = ["{origin}"]

[agents.sales]
system_instruction = "Sales."
google_search = true
"""

HOST_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Shop</title><link rel="icon" href="data:,">
<script type="module" src="{parley}/widget.js"></script></head>
<body>
  <parley-call server="{parley}" agent="support" data-var-customer_name="Ada" label="Talk to us">
  </parley-call>
  <script>document.querySelector("parley-call").variables = {{ order_id: "A-17" }};</script>
</body>
</html>
"""


def instruction(setup: dict[str, Any] | None) -> str:
    parts = pick(pick(setup, "system_instruction"), "parts") or []
    return "".join(str(pick(part, "text", "")) for part in parts)


@pytest.fixture
async def shop() -> AsyncIterator[tuple[web.AppRunner, dict[str, str]]]:
    """Another origin's page embedding the widget (its Parley server is filled in once started)."""
    where: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=HOST_PAGE.format(parley=where["parley"]), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    where["origin"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield runner, where
    finally:
        await runner.cleanup()


async def test_the_page_calls_the_agent_it_names_and_shows_grounding_sources(
    emulator: GeminiEmulator, pages: Pages, tmp_path: Path, shop: tuple[web.AppRunner, dict[str, str]]
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS.format(origin=shop[1]["origin"]))
    running = await start_server(emulator, agents_file=str(agents))
    try:
        page = await pages.open(f"http://127.0.0.1:{running.port}/?agent=sales")
        await page.get_by_role("button", name="Call").click()
        await wait_until(lambda: emulator.connections and emulator.connections[0].setup, 20, "the setup")
        assert instruction(emulator.connections[0].setup) == "Sales."
        # The fake microphone speaks, the emulator answers grounded: the sources appear under the caption.
        sources = page.locator("#captions li.agent .sources a")
        await expect(sources).to_have_count(2, timeout=30_000)
        assert (await sources.first.get_attribute("href") or "").startswith(
            "https://search.emulator.invalid/"
        )
        assert (await sources.first.get_attribute("rel")) == "noopener noreferrer"
        call = next(iter(running.worker.calls.values()))
        assert call.summary()["agent"] == "sales"
        # a page naming an agent the server does not have says so at once
        wrong = await pages.open(f"http://127.0.0.1:{running.port}/?agent=nobody")
        await expect(wrong.locator("#status")).to_contain_text("no agent named 'nobody'", timeout=10_000)
    finally:
        await running.stop()


async def test_the_widget_calls_its_agent_with_the_page_variables(
    emulator: GeminiEmulator, pages: Pages, tmp_path: Path, shop: tuple[web.AppRunner, dict[str, str]]
) -> None:
    where = shop[1]
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS.format(origin=where["origin"]))
    running = await start_server(emulator, agents_file=str(agents))
    where["parley"] = f"http://127.0.0.1:{running.port}"
    try:
        page = await pages.open(where["origin"])
        widget = page.locator("parley-call")
        await widget.get_by_role("button", name="Talk to us").click()
        await wait_until(lambda: emulator.connections and emulator.connections[0].setup, 20, "the setup")
        assert instruction(emulator.connections[0].setup) == "Support for Ada, order A-17."
        await expect(widget.get_by_role("status")).to_have_text("In call", timeout=20_000)
    finally:
        await running.stop()
