"""The join page in real Chromium against `parley serve --processes 2`: the page talks to the front
door, its media to the media process holding its call."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from tests.browser.conftest import Pages, client_state
from tests.browser.test_page import wait_for_state
from tests.test_media_processes import Pool, pool  # noqa: F401 - the fixture
from tests.test_webhooks import receiver  # noqa: F401 - the pool's fixture's


async def test_page_call_through_media_processes_is_heard_and_hung_up(
    pool: Pool,  # noqa: F811
    pages: Pages,
) -> None:
    page = await pages.open(pool.url + "/")
    await expect(page.locator("#mode")).to_contain_text("Offline emulator mode")
    await page.get_by_role("button", name="Call").click()
    await wait_for_state(page, "in-call", 30)
    await page.wait_for_function(
        "() => parleyDebug.client.turns.length >= 1 && parleyDebug.client.debug.agentLoudMs > 2000",
        timeout=40_000,
        polling=200,
    )
    await expect(page.locator("#captions li.agent")).not_to_have_count(0)
    call_id = (await client_state(page))["callId"]
    status, state = await pool.get(f"/v1/calls/{call_id}")
    assert status == 200 and state["state"] == "active" and state["worker"] in ("serve-1", "serve-2")

    await page.get_by_role("button", name="Hang up").click()
    await expect(page.locator("#status")).to_have_text("Call ended. You hung up.")
    for _ in range(100):
        status, state = await pool.get(f"/v1/calls/{call_id}")
        if state.get("state") == "ended":
            break
        await asyncio.sleep(0.1)
    assert state["end_reason"] == "hangup", state
    assert not [line for line in pages.console if line.startswith(("error", "pageerror"))], pages.console
