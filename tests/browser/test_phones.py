"""The page and the widget at phone sizes (Chromium's device emulation: 390x844 and 360x800, touch),
and what phones force on a call, where a desktop browser can reproduce it."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import SCREENSHOTS, Pages
from tests.browser.test_widget import HostSite, host_site, parley_for  # noqa: F401 - host_site: a fixture
from tests.waiting import wait_until

PHONES = [(390, 844), (360, 800)]
MIN_TARGET_PX = 44  # WCAG 2.5.5: a target a thumb can hit


async def layout(page: Page, root: str = "document") -> dict[str, Any]:
    """What a thumb and an eye get: horizontal overflow, every visible button's box, the captions' font."""
    result: dict[str, Any] = await page.evaluate(
        f"""() => {{
            const root = {root};
            const buttons = [...root.querySelectorAll("button")].filter((b) => b.offsetParent !== null
                || getComputedStyle(b).position === "fixed");
            const caption = root.querySelector("#captions li, .captions li");
            return {{
                scrollWidth: document.documentElement.scrollWidth,
                width: window.innerWidth,
                height: window.innerHeight,
                buttons: buttons.map((b) => {{
                    const r = b.getBoundingClientRect();
                    return {{ name: b.textContent.trim(), left: r.left, right: r.right, top: r.top,
                              bottom: r.bottom, width: r.width, height: r.height }};
                }}),
                captionPx: caption ? parseFloat(getComputedStyle(caption).fontSize) : null,
                captionRight: caption ? caption.getBoundingClientRect().right : null,
            }};
        }}"""
    )
    return result


def assert_thumb_friendly(box: dict[str, Any], what: str, on_screen: tuple[str, ...]) -> None:
    """No sideways scroll, every button big enough and within the width, the `on_screen` ones visible
    without scrolling, captions at a readable size and not cut off."""
    assert box["scrollWidth"] <= box["width"], f"{what}: scrolls sideways ({box['scrollWidth']} px)"
    assert box["buttons"], f"{what}: no buttons"
    for b in box["buttons"]:
        assert b["height"] >= MIN_TARGET_PX and b["width"] >= MIN_TARGET_PX, f"{what}: {b} too small"
        assert 0 <= b["left"] and b["right"] <= box["width"], f"{what}: {b} off screen"
    for name in on_screen:
        b = next(b for b in box["buttons"] if b["name"] == name)
        assert 0 <= b["top"] and b["bottom"] <= box["height"], f"{what}: {b} needs scrolling"
    if box["captionPx"] is not None:
        assert box["captionPx"] >= 16, f"{what}: captions at {box['captionPx']} px"
        assert box["captionRight"] <= box["width"], f"{what}: captions cut off"


@pytest.mark.parametrize("phone", PHONES, ids=[f"{w}x{h}" for w, h in PHONES])
async def test_page_on_a_phone_call_by_tap_thumb_reachable_readable_no_sideways_scroll(
    server: Running, url: str, pages: Pages, phone: tuple[int, int]
) -> None:
    page = await pages.open(url, phone=phone)
    await expect(page.locator("#mode")).to_be_visible()
    assert_thumb_friendly(await layout(page), f"page before the call at {phone}", ("Call",))
    await page.get_by_role("button", name="Call").tap()
    await page.wait_for_function("() => parleyDebug.client.state === 'in-call'", timeout=20_000)
    await page.wait_for_function(
        "() => parleyDebug.client.debug.events.some((e) => e.type === 'agent_turn_end')", timeout=40_000
    )
    await expect(page.locator("#captions li.agent")).not_to_have_count(0)
    box = await layout(page)
    assert_thumb_friendly(box, f"page in a call at {phone}", ("Mute", "Hang up"))
    # the call's own buttons sit where a thumb rests: the lower half of the screen
    for name in ("Mute", "Hang up"):
        button = next(b for b in box["buttons"] if b["name"] == name)
        assert button["top"] > box["height"] / 2, f"{name} is out of the thumb's reach: {button}"
    await page.screenshot(path=str(SCREENSHOTS / f"phone-page-{phone[0]}x{phone[1]}.png"))
    await page.get_by_role("button", name="Hang up").tap()
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")


@pytest.mark.parametrize("phone", PHONES, ids=[f"{w}x{h}" for w, h in PHONES])
async def test_widget_on_a_phone_opens_within_the_screen(
    emulator: GeminiEmulator,
    host_site: HostSite,  # noqa: F811
    pages: Pages,
    phone: tuple[int, int],
) -> None:
    running = await parley_for(emulator, host_site, [host_site.origin])
    try:
        page = await pages.open(host_site.origin, phone=phone)
        widget = page.locator("parley-call")
        await widget.get_by_role("button", name="Talk to us").tap()
        await page.wait_for_function(
            "() => document.querySelector('parley-call').client.state === 'in-call'", timeout=20_000
        )
        await page.wait_for_function(
            "() => document.querySelector('parley-call').shadowRoot.querySelectorAll('.captions li').length"
            " >= 2",
            timeout=40_000,
        )
        box = await layout(page, "document.querySelector('parley-call').shadowRoot")
        assert_thumb_friendly(box, f"widget at {phone}", ("Mute", "Hang up"))
        await page.screenshot(path=str(SCREENSHOTS / f"phone-widget-{phone[0]}x{phone[1]}.png"))
        await widget.get_by_role("button", name="Hang up").tap()
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
    finally:
        await running.stop()


async def in_call_on_a_phone(url: str, pages: Pages) -> tuple[Page, str]:
    page = await pages.open(url, phone=PHONES[0])
    await page.get_by_role("button", name="Call").tap()
    await page.wait_for_function("() => parleyDebug.client.state === 'in-call'", timeout=20_000)
    await page.evaluate(  # every status the page shows, from now on
        """() => { window.statuses = [];
            const status = document.querySelector('#status');
            new MutationObserver(() => window.statuses.push(status.textContent))
                .observe(status, { childList: true, characterData: true, subtree: true });
        }"""
    )
    return page, str(await page.evaluate("() => parleyDebug.client.callId"))


async def test_a_microphone_ended_by_the_system_is_said_and_resumed_on_the_same_call(
    server: Running, url: str, pages: Pages
) -> None:
    page, call_id = await in_call_on_a_phone(url, pages)
    # What a phone call does to the page's microphone: the track ends (readyState "ended", an `ended`
    # event). Chromium cannot be made to do it from outside, so the page's track is stopped and told.
    await page.evaluate(
        """() => { const track = parleyDebug.client.mic.getAudioTracks()[0];
                   track.stop(); track.dispatchEvent(new Event('ended')); }"""
    )
    await expect(page.locator("#status")).to_contain_text("The microphone was interrupted")
    await expect(page.locator("#status")).to_have_attribute("data-state", "warning")
    resume = page.get_by_role("button", name="Resume microphone")
    await expect(resume).to_be_visible()
    turns = len(await page.evaluate("() => parleyDebug.client.turns"))
    await resume.tap()
    await expect(resume).to_be_hidden()
    await expect(page.locator("#status")).to_have_text("In call")
    assert await page.evaluate("() => parleyDebug.client.mic.getAudioTracks()[0].readyState") == "live"
    # The same call hears the user again: the next sentence is answered.
    await page.wait_for_function(f"() => parleyDebug.client.turns.length > {turns}", timeout=40_000)
    assert await page.evaluate("() => parleyDebug.client.callId") == call_id
    assert list(server.worker.calls) == [call_id]
    assert server.worker.calls[call_id].rejoins == 0


async def test_the_page_in_the_background_says_the_call_goes_on_and_carries_on_in_front_again(
    server: Running, url: str, pages: Pages
) -> None:
    page, call_id = await in_call_on_a_phone(url, pages)
    # Headless Chromium keeps a page visible whatever tab is in front, so the page is told it is hidden
    # the way a phone tells it, and meanwhile loses what a phone takes from a page in the background:
    # its audio output paused and its AudioContext suspended.
    await page.evaluate(
        """async () => {
            Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
            document.dispatchEvent(new Event('visibilitychange'));
            document.querySelector('#agent').pause();
            await parleyDebug.client.context.suspend();
        }"""
    )
    await page.wait_for_function(
        "() => window.statuses.includes('In call (in the background: the call goes on)')", timeout=5_000
    )
    assert list(server.worker.calls) == [call_id]  # the call carries on in the background
    turns = len(await page.evaluate("() => parleyDebug.client.turns"))
    await page.evaluate(
        """() => {
            Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    await expect(page.locator("#status")).to_have_text("In call")
    await page.wait_for_function(
        "() => !document.querySelector('#agent').paused && parleyDebug.client.context.state === 'running'",
        timeout=5_000,
    )
    # and the call goes on: the next sentence is answered and heard
    await page.wait_for_function(f"() => parleyDebug.client.turns.length > {turns}", timeout=40_000)
    assert await page.evaluate("() => parleyDebug.client.callId") == call_id
    assert list(server.worker.calls) == [call_id]
