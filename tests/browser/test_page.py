"""The join page in real Chromium: a call with the fake microphone, the agent's echo heard, captions,
the latency panel, hang-up, the error states, and rejoining the same call after the network fails."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Page, expect

from parley.caller import Caller
from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import (
    INBOUND_AUDIO,
    SCREENSHOTS,
    Pages,
    assert_server_hears_nothing,
    client_state,
    cut_network,
    start_server,
)
from tests.waiting import wait_until


async def wait_for_state(page: Page, state: str, timeout_s: float) -> None:
    await page.wait_for_function(
        f"() => parleyDebug.client.state === {state!r}", timeout=timeout_s * 1000, polling=100
    )


async def test_page_call_hears_the_agent_shows_captions_and_latency_and_hangs_up(
    server: Running, url: str, pages: Pages
) -> None:
    page = await pages.open(url)
    await expect(page.locator("#mode")).to_contain_text("Offline emulator mode")
    await page.get_by_role("button", name="Call").click()
    await wait_for_state(page, "in-call", 20)
    await expect(page.locator("#status")).to_have_text("In call")
    await expect(page.get_by_role("button", name="Hang up")).to_be_enabled()

    # Chromium reached the server over loopback.
    local_address = await page.evaluate(
        """async () => {
            const stats = await parleyDebug.client.pc.getStats();
            let pair = null;
            stats.forEach((s) => {
                if (s.type === "transport") pair = stats.get(s.selectedCandidatePairId);
            });
            return pair && stats.get(pair.localCandidateId).address;
        }"""
    )
    assert local_address == "127.0.0.1"

    # The fake microphone speaks; the emulator says it back; the page hears it and times the turn.
    await page.wait_for_function(
        "() => parleyDebug.client.turns.length >= 1 && parleyDebug.client.debug.agentLoudMs > 2000",
        timeout=30_000,
        polling=200,
    )
    await page.wait_for_function(
        "() => parleyDebug.client.debug.events.some((e) => e.type === 'agent_turn_end')",
        timeout=15_000,
        polling=200,
    )
    await expect(page.locator("#captions li.user")).not_to_have_count(0)
    await expect(page.locator("#captions li.agent")).not_to_have_count(0)
    assert (await page.locator("#captions li.agent").first.inner_text()).startswith("Agent: ")

    state = await client_state(page)
    v2v = state["turns"][0]
    # The emulator answers after 0.5 s of silence; generous bounds for a loaded machine.
    assert 200 < v2v < 4000, v2v
    await expect(page.locator("#v2v")).to_have_text(re.compile(r"^\d+ ms$"), timeout=5000)
    # a figure that means something: loopback's sub-millisecond round trip is not "0 ms"
    await expect(page.locator("#rtt")).to_have_text(re.compile(r"^(\d+(\.\d)?|< 0\.1) ms$"), timeout=5000)
    assert await page.locator("#rtt").inner_text() != "0 ms"
    await expect(page.locator("#jitter-buffer")).to_have_text(re.compile(r"^\d+ ms$"))
    # the browser's own share beside the round trip: Chromium reports all of it (the microphone track's
    # own latency, the jitter buffer and its target, media-playout)
    await expect(page.locator("#jitter-target")).to_have_text(re.compile(r"^target \d+ ms$"))
    await expect(page.locator("#capture")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    await expect(page.locator("#playout")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    await expect(page.locator("#packets-lost")).to_have_text(re.compile(r"^\d+$"))
    await page.screenshot(path=str(SCREENSHOTS / "page.png"), full_page=True)

    assert list(server.worker.calls) == [state["callId"]]
    # Mute while the user speaks: the server stops hearing them at once, though the sentence goes on.
    call = server.worker.calls[state["callId"]]
    await wait_until(lambda: call.vad.speaking, 20, "the next sentence to reach the server")
    await page.get_by_role("button", name="Mute").click()
    await expect(page.get_by_role("button", name="Mute")).to_have_attribute("aria-pressed", "true")
    await assert_server_hears_nothing(call, 2.0)  # of what would still be the sentence (4.9 s long)
    await page.get_by_role("button", name="Mute").click()
    await expect(page.get_by_role("button", name="Mute")).to_have_attribute("aria-pressed", "false")

    await page.get_by_role("button", name="Hang up").click()
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")
    assert server.worker.calls_ended == {"hangup": 1}
    await expect(page.locator("#status")).to_have_text("Call ended. You hung up.")
    await expect(page.get_by_role("button", name="Call")).to_be_enabled()


async def test_page_says_when_the_microphone_is_denied(server: Running, url: str, pages: Pages) -> None:
    page = await pages.open(url, microphone="denied")
    await page.get_by_role("button", name="Call").click()
    await expect(page.locator("#status")).to_contain_text("Microphone access was denied", timeout=10_000)
    await expect(page.get_by_role("button", name="Call")).to_be_enabled()
    assert server.worker.calls_started == 0


async def test_page_says_when_there_is_no_microphone(server: Running, url: str, pages: Pages) -> None:
    page = await pages.open(url, microphone="none")
    await page.get_by_role("button", name="Call").click()
    await expect(page.locator("#status")).to_contain_text("No microphone was found", timeout=10_000)
    assert server.worker.calls_started == 0


async def test_page_says_when_the_server_is_busy(emulator: GeminiEmulator, pages: Pages) -> None:
    running = await start_server(emulator, max_calls=1)
    url = f"http://127.0.0.1:{running.port}"
    caller = Caller(url)  # takes the one slot
    try:
        await caller.connect()
        page = await pages.open(url)
        await page.get_by_role("button", name="Call").click()
        await expect(page.locator("#status")).to_contain_text("The server is busy right now", timeout=15_000)
        await expect(page.locator("#status")).to_have_attribute("data-state", "error")
        await expect(page.get_by_role("button", name="Call")).to_be_enabled()
        assert len(running.worker.calls) == 1
    finally:
        await caller.hang_up()
        await running.stop()


async def test_page_says_when_the_server_cannot_be_reached(emulator: GeminiEmulator, pages: Pages) -> None:
    running = await start_server(emulator)
    page = await pages.open(f"http://127.0.0.1:{running.port}")
    await expect(page.locator("#mode")).to_be_visible()
    await running.stop()
    await page.get_by_role("button", name="Call").click()
    await expect(page.locator("#status")).to_contain_text("Cannot reach the Parley server", timeout=15_000)


async def test_page_rejoins_the_same_call_when_the_connection_fails(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    """The network goes mid-call: the page makes a new peer connection and POSTs its offer with
    `resume: <call id>`; the server must join it to the call, which kept its Gemini session."""
    page = await pages.open(url)
    await page.get_by_role("button", name="Call").click()
    await wait_for_state(page, "in-call", 20)
    call_id = (await client_state(page))["callId"]
    await wait_until(lambda: server.worker.calls[call_id].state == "active", 10, "the call to be active")
    assert len(emulator.connections) == 1

    cut_network(server.worker.calls[call_id].pc)
    await wait_for_state(page, "reconnecting", 20)
    await wait_for_state(page, "in-call", 25)
    await expect(page.locator("#status")).to_have_text("In call (reconnected)")

    state = await client_state(page)
    assert state["callId"] == call_id, "the page is in another call, not the one it had"
    assert list(server.worker.calls) == [call_id]
    assert len(emulator.connections) == 1, "the Gemini session was not kept"
    # The call goes on: the next sentence is answered over the new connection.
    turns = len(state["turns"])
    await page.wait_for_function(
        f"() => parleyDebug.client.turns.length > {turns}", timeout=35_000, polling=200
    )
    await page.get_by_role("button", name="Hang up").click()
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")
    assert server.worker.calls_ended == {"hangup": 1}


async def test_page_plays_a_dtx_downlink_without_concealing_it(
    emulator: GeminiEmulator, pages: Pages
) -> None:
    # PARLEY_DOWNLINK_DTX: the agent's settled silence comes as one DTX packet every 400 ms. Chromium
    # must take it as silence (comfort noise), not as loss, and play the answer after it whole.
    running = await start_server(emulator, downlink_dtx=True)
    try:
        page = await pages.open(f"http://127.0.0.1:{running.port}/")
        await page.get_by_role("button", name="Call").click()
        await wait_for_state(page, "in-call", 20)
        ends = "parleyDebug.client.debug.events.filter((e) => e.type === 'agent_turn_end').length"
        await page.wait_for_function(f"() => {ends} >= 1", timeout=60_000, polling=200)
        first = await page.evaluate("parleyDebug.client.debug.agentLoudMs")
        await page.wait_for_function(f"() => {ends} >= 2", timeout=60_000, polling=200)
        await asyncio.sleep(0.5)
        end = await page.evaluate(INBOUND_AUDIO)
        second = await page.evaluate("parleyDebug.client.debug.agentLoudMs") - first
        call = running.worker.calls[(await client_state(page))["callId"]]
        seconds = call.summary()["seconds"]
        assert call.track.frames_skipped > 100  # DTX was on: most of the silence was never sent
        # far fewer than 50 packets a second reached the browser, and it concealed (almost) none of the gaps
        assert end["packets"] < 0.8 * 50 * seconds, (end, seconds)
        assert end["concealed"] < 0.02 * end["total"], end
        assert first > 500 and second > 0.6 * first, (first, second)  # the answer after DTX is heard whole
        await page.get_by_role("button", name="Hang up").click()
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
    finally:
        await running.stop()
