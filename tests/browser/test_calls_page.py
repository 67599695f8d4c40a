"""The operator page (/calls) in real Chromium: the list of recorded calls, and one call's facts,
recording, timeline, latency plot and transcript. And the join page says when calls are recorded."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from parley.emulator.server import GeminiEmulator
from tests.browser.conftest import SCREENSHOTS, Pages, start_server
from tests.test_records import recorded, talk


async def test_the_calls_page_lists_calls_and_shows_one_as_a_conversation(
    emulator: GeminiEmulator, pages: Pages, tmp_path: Path
) -> None:
    running = await start_server(
        emulator,
        database_url=f"sqlite:///{tmp_path}/r.db",
        record_audio=True,
        recordings_dir=str(tmp_path / "recordings"),
    )
    url = f"http://127.0.0.1:{running.port}"
    try:
        # One call from the join page, which says the call is recorded and reports voice-to-voice.
        join = await pages.open(url + "/")
        await expect(join.locator("#recorded")).to_be_visible(timeout=10000)
        await expect(join.locator("#recorded")).to_have_text("This call is recorded.")
        await join.get_by_role("button", name="Call").click()
        await join.wait_for_function("() => parleyDebug.client.turns.length >= 1", timeout=40000, polling=200)
        page_call = await join.evaluate("() => parleyDebug.client.callId")
        await join.get_by_role("button", name="Hang up").click()
        record = await recorded(url, page_call)
        assert record["latency"]["voice_to_voice"]["count"] >= 1, record["latency"]
        ids = [await talk(url) for _ in range(2)]
        for call_id in ids:
            await recorded(url, call_id)

        page = await pages.open(url + "/calls")
        rows = page.locator("#calls tbody tr")
        await expect(rows).to_have_count(3, timeout=10000)
        await expect(page.locator("#status")).to_have_text("3 calls, newest first")
        assert await rows.first.get_attribute("data-id") == ids[1]  # newest first
        await expect(rows.first.locator("td").nth(3)).to_have_text("hangup")

        await rows.nth(1).click()
        await expect(page.locator("#call")).to_be_visible()
        await expect(page.locator("#call-title")).to_have_text(f"Call {ids[0][:12]}")
        conversation = page.locator("#transcript li")
        await expect(page.locator("#transcript li.user")).to_have_count(1)
        await expect(page.locator("#transcript li.agent")).to_have_count(1)
        assert await conversation.count() == 2
        await expect(page.locator("#timeline li").first).to_contain_text("Gemini connected")
        await expect(page.locator("#timeline")).to_contain_text("agent turn 1 ends")
        await expect(page.locator("#facts")).to_contain_text("$")
        await expect(page.locator("#plot")).not_to_be_empty()
        player = page.locator("#player")
        await expect(player).to_be_visible()
        duration = await page.wait_for_function(
            "() => { const p = document.getElementById('player');"
            " return p.src && p.readyState >= 1 && isFinite(p.duration) ? p.duration : null }",
            timeout=15000,
        )
        assert await duration.json_value() > 3
        await page.screenshot(path=str(SCREENSHOTS / "calls.png"), full_page=True)
        errors = [line for line in pages.console if line.startswith(("error", "pageerror"))]
        assert not errors, errors
    finally:
        await running.stop()
