"""The <parley-call> widget embedded in a page of another origin (a second server on another port)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import SCREENSHOTS, Pages, start_server
from tests.waiting import wait_until

HOST_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Acme Bikes: support</title>
  <link rel="icon" href="data:,">
  <style>
    body {{ font-family: Georgia, serif; margin: 0; background: #f7f4ee; color: #222; }}
    header {{ background: #23395d; color: #fff; padding: 1rem 2rem; font-size: 1.4rem; }}
    main {{ padding: 1rem 2rem; max-width: 40rem; }}
  </style>
  <script type="module" src="{parley}/widget.js"></script>
</head>
<body>
  <header>Acme Bikes</header>
  <main>
    <h1>Support</h1>
    <p>Questions about your order, a repair or a part? Talk to our assistant: press the button in the
    corner, allow the microphone and speak.</p>
    <p>Opening hours: Monday to Saturday, 9:00 to 18:00.</p>
  </main>
  <parley-call server="{parley}" label="Talk to us" position="bottom-right" theme="light"></parley-call>
  <script>
    window.hostEvents = [];
    for (const type of ["parley-state", "parley-transcript", "parley-video"]) {{
      document.addEventListener(type, (event) => window.hostEvents.push({{ type, ...event.detail }}));
    }}
  </script>
</body>
</html>
"""


class HostSite:
    """Another origin's web site: serves one page embedding the widget from `parley`."""

    def __init__(self) -> None:
        self.parley = ""
        self.runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=HOST_PAGE.format(parley=self.parley), content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def host_site() -> AsyncIterator[HostSite]:
    site = HostSite()
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


async def parley_for(
    emulator: GeminiEmulator, site: HostSite, allowed: list[str], **settings: Any
) -> Running:
    running = await start_server(emulator, allowed_origins=allowed, **settings)
    site.parley = f"http://127.0.0.1:{running.port}"
    return running


async def host_events(page: Page, type_: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate(
        f"() => window.hostEvents.filter((e) => e.type === {type_!r})"
    )
    return events


async def test_widget_on_an_allowed_origin_makes_a_call(
    emulator: GeminiEmulator, host_site: HostSite, pages: Pages
) -> None:
    running = await parley_for(emulator, host_site, [host_site.origin])
    try:
        page = await pages.open(host_site.origin)
        widget = page.locator("parley-call")
        await widget.get_by_role("button", name="Talk to us").click()
        await page.wait_for_function(
            "() => window.hostEvents.some((e) => e.type === 'parley-state' && e.state === 'in-call')",
            timeout=20_000,
        )
        await expect(widget.get_by_role("status")).to_have_text("In call")
        assert len(running.worker.calls) == 1
        await expect(widget.locator(".recorded")).to_be_hidden()  # this server does not record
        # Captions of both sides reach the widget and the host page.
        await page.wait_for_function(
            "() => ['user', 'agent'].every((role) => window.hostEvents.some("
            "(e) => e.type === 'parley-transcript' && e.role === role))",
            timeout=30_000,
            polling=200,
        )
        await expect(widget.locator(".captions li")).not_to_have_count(0)
        await page.wait_for_function(
            "() => document.querySelector('parley-call').client.debug.agentLoudMs > 1000", timeout=15_000
        )
        await page.screenshot(path=str(SCREENSHOTS / "widget.png"))
        states = [e["state"] for e in await host_events(page, "parley-state")]
        assert states[:2] == ["connecting", "in-call"], states

        await widget.get_by_role("button", name="Hang up").click()
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
        assert running.worker.calls_ended == {"hangup": 1}
        await expect(widget.get_by_role("status")).to_have_text("Call ended. You hung up.")
        await expect(widget.get_by_role("button", name="Talk to us")).to_be_visible()
    finally:
        await running.stop()


async def test_the_widget_says_the_call_is_recorded_before_the_caller_presses_the_button(
    emulator: GeminiEmulator, host_site: HostSite, pages: Pages, tmp_path: Path
) -> None:
    running = await parley_for(
        emulator, host_site, [host_site.origin], record_audio=True, recordings_dir=str(tmp_path / "rec")
    )
    try:
        page = await pages.open(host_site.origin)
        widget = page.locator("parley-call")
        notice = widget.locator(".recorded")
        await expect(notice).to_be_visible(timeout=10_000)
        await expect(notice).to_have_text("This call is recorded.")
        assert not running.worker.calls  # told before any call
        await widget.get_by_role("button", name="Talk to us").click()
        await expect(widget.get_by_role("status")).to_have_text("In call", timeout=20_000)
        await expect(notice).to_be_visible()  # and all through the call
        await widget.get_by_role("button", name="Hang up").click()
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
    finally:
        await running.stop()


async def test_widget_on_another_origin_is_refused_with_a_clear_message(
    emulator: GeminiEmulator, host_site: HostSite, pages: Pages
) -> None:
    running = await parley_for(emulator, host_site, [])  # the default: same origin only
    try:
        page = await pages.open(host_site.origin)
        widget = page.locator("parley-call")
        await widget.get_by_role("button", name="Talk to us").click()
        await expect(widget.get_by_role("status")).to_have_text(
            "This site is not allowed to use this Parley server.", timeout=10_000
        )
        errors = [e for e in await host_events(page, "parley-state") if e["state"] == "error"]
        assert errors and errors[-1]["reason"] == "forbidden"
        # What the browser was told: 403 and a JSON error, for the API's every route.
        answers = await page.evaluate(
            """async (base) => {
                const out = [];
                for (const [method, path] of [["GET", "/v1/config"], ["POST", "/v1/calls"],
                                              ["GET", "/v1/calls/x"], ["DELETE", "/v1/calls/x"]]) {
                    try {
                        const r = await fetch(base + path, { method });
                        out.push([method, path, r.status, (await r.json()).error]);
                    } catch (e) { out.push([method, path, "blocked", String(e)]); }
                }
                return out;
            }""",
            host_site.parley,
        )
        simple = {(m, p): (s, e) for m, p, s, e in answers}
        status, message = simple[("GET", "/v1/config")]
        assert status == 403 and host_site.origin in message, answers
        assert simple[("POST", "/v1/calls")][0] == 403, answers
        # DELETE needs a preflight, which is refused: the browser never sends the request.
        assert simple[("DELETE", "/v1/calls/x")][0] == "blocked", answers
        assert running.worker.calls_started == 0
    finally:
        await running.stop()
