"""Camera and screen share from the join page and the widget, in real Chromium, to the emulator.

The fake camera plays a red Y4M (conftest.CAMERA_RGB); Chromium's fake screen is mostly green. The
emulator names the dominant colour of every JPEG the agent sends it, so a colour seen there has crossed
the whole path: capture, the page's sender limits, VP8 over RTP, the agent's decoder and JPEG encoder,
the Gemini socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Locator, Page, expect

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import Pages
from tests.browser.test_widget import HostSite, host_events, parley_for
from tests.browser.test_widget import host_site as host_site  # the fixture
from tests.waiting import wait_until

FPS = 2.0  # PARLEY_VIDEO_FPS (and idle): frames the agent sends Gemini per second
SEND_FPS = 2 * FPS  # what the page asks its sender for (client/video.js: twice the sampling rate)


@pytest.fixture
def server_settings() -> dict[str, object]:
    return {"video_fps": FPS, "video_idle_fps": FPS}


async def in_call(page: Page) -> None:
    await page.get_by_role("button", name="Call").click()
    await page.wait_for_function("() => parleyDebug.client.state === 'in-call'", timeout=20_000, polling=100)


async def call_video(url: str, call_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/calls/{call_id}") as response:
        assert response.status == 200
        video: dict[str, Any] = (await response.json())["video"]
        return video


async def last_video_event(page: Page, state: str) -> None:
    """Wait until the agent's latest `video` data-channel event has this state."""
    await page.wait_for_function(
        "(s) => parleyDebug.client.debug.events.filter((e) => e.type === 'video').at(-1)?.state === s",
        arg=state,
        timeout=10_000,
    )


async def sender(page: Page) -> dict[str, Any]:
    """The page's video sender: its track and the limits it was given."""
    result: dict[str, Any] = await page.evaluate(
        """() => {
            const t = parleyDebug.client.pc.getTransceivers().find((x) => x.receiver.track.kind === 'video');
            const track = t.sender.track;
            const enc = t.sender.getParameters().encodings[0] || {};
            return { track: track ? track.readyState : null, maxFramerate: enc.maxFramerate,
                     scale: enc.scaleResolutionDownBy, maxBitrate: enc.maxBitrate,
                     selfView: !document.getElementById('self-view').hidden };
        }"""
    )
    return result


async def test_camera_reaches_the_agent_at_the_set_rate_and_off_stops_it(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    page = await pages.open(url)
    await in_call(page)
    call_id = await page.evaluate("() => parleyDebug.client.callId")
    camera = page.get_by_role("button", name="Camera")
    await camera.click()
    await expect(camera).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#video-status")).to_have_text("Camera on: the agent sees it.", timeout=15_000)
    limits = {"maxFramerate": SEND_FPS, "scale": 1280 / 768, "maxBitrate": 300_000}
    assert await sender(page) == {"track": "live", "selfView": True, **limits}
    images = emulator.connections[-1].images
    await wait_until(lambda: len(images) >= 3, 20, "the first frames at the emulator")
    # Gemini is shown frames at the set rate, scaled to PARLEY_VIDEO_MAX_SIDE, red as the camera.
    before, start, start_at = len(images), time.monotonic(), time.time()
    received = (await call_video(url, call_id))["frames_received"]
    await asyncio.sleep(6.0)
    elapsed = time.monotonic() - start
    rate = (len(images) - before) / elapsed
    summary = await call_video(url, call_id)
    # A browser stalled by a busy machine may miss a sample; a page sending at the sampling rate or
    # slower would miss every other one (the agent sends frames younger than one interval only).
    assert FPS * 0.6 <= rate <= FPS * 1.1, f"{rate} {summary} {[round(i.at - start_at, 2) for i in images]}"
    assert {(i.width, i.height, i.colour) for i in images} == {(768, 432, "red")}
    # ...and the browser sent no more than it was asked to: the server decodes little.
    sent_rate = ((await call_video(url, call_id))["frames_received"] - received) / elapsed
    assert FPS <= sent_rate <= SEND_FPS * 1.25, sent_rate

    # Camera off: the track is stopped (the camera light goes off) and the agent sees nothing more.
    track = await page.evaluate_handle("() => parleyDebug.client.video.track")
    await camera.click()
    await expect(camera).to_have_attribute("aria-pressed", "false")
    await expect(page.locator("#self-view")).to_be_hidden()
    assert await track.evaluate("(t) => t.readyState") == "ended"
    assert (await sender(page))["track"] is None
    await last_video_event(page, "paused")
    paused, received = len(images), (await call_video(url, call_id))["frames_received"]
    await asyncio.sleep(2.0)
    assert len(images) == paused
    assert (await call_video(url, call_id))["frames_received"] <= received + 1  # one may be on its way

    # On again: frames resume in the same call, at once.
    await camera.click()
    resumed = time.time()
    await wait_until(lambda: len(images) > paused, 10, "frames after the camera came back")
    assert images[paused].colour == "red" and images[paused].at - resumed < 3.0
    assert len(server.worker.calls) == 1 and len(emulator.connections) == 1
    await page.get_by_role("button", name="Hang up").click()
    await wait_until(lambda: not server.worker.calls, 10, "the call to end")


async def test_switching_to_the_screen_mid_call_and_back(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    """(A share refused, or ended from the browser's side, is in test_video_states.py.)"""
    page = await pages.open(url)
    await in_call(page)
    images = emulator.connections[-1].images
    camera = page.get_by_role("button", name="Camera")
    await camera.click()
    await wait_until(lambda: images and images[-1].colour == "red", 20, "the camera at the emulator")
    screen = page.get_by_role("button", name="Share screen")
    await screen.click()
    await expect(screen).to_have_attribute("aria-pressed", "true")
    await expect(camera).to_have_attribute("aria-pressed", "false")
    await wait_until(lambda: images[-1].colour == "green", 20, "the screen at the emulator")
    assert images[-1].width == 768  # Chromium's fake screen is 1280x720: scaled as the camera is
    settings = await sender(page)
    assert settings["maxBitrate"] == 600_000 and settings["maxFramerate"] == SEND_FPS
    assert await page.evaluate("() => parleyDebug.client.video.track.contentHint") == "text"
    # Back to the camera: the same call, the same m-line, the screen's track stopped.
    track = await page.evaluate_handle("() => parleyDebug.client.video.track")
    await camera.click()
    await expect(camera).to_have_attribute("aria-pressed", "true")
    await expect(screen).to_have_attribute("aria-pressed", "false")
    await wait_until(lambda: images[-1].colour == "red", 20, "the camera at the emulator again")
    assert await track.evaluate("(t) => t.readyState") == "ended"
    assert (await sender(page))["maxBitrate"] == 300_000
    assert len(server.worker.calls) == 1 and len(emulator.connections) == 1


async def widget_call(widget: Locator) -> None:
    await widget.get_by_role("button", name="Talk to us").click()
    await expect(widget.get_by_role("status")).to_have_text("In call", timeout=20_000)


async def test_the_widget_offers_video_only_when_asked(
    emulator: GeminiEmulator, host_site: HostSite, pages: Pages
) -> None:
    running = await parley_for(emulator, host_site, [host_site.origin])
    try:
        # The default widget: no toggles, no video m-line, so no camera prompt.
        page = await pages.open(host_site.origin)
        widget = page.locator("parley-call")
        await widget_call(widget)
        await expect(widget.get_by_role("button", name="Camera")).to_be_hidden()
        assert "m=video" not in await page.evaluate(
            "() => document.querySelector('parley-call').client.pc.localDescription.sdp"
        )
        await widget.get_by_role("button", name="Hang up").click()
        await wait_until(lambda: not running.worker.calls, 10, "the call to end")

        # video="camera": a Camera toggle, parley-video events, the camera seen by the agent.
        await page.evaluate("() => document.querySelector('parley-call').setAttribute('video', 'camera')")
        await widget_call(widget)
        await expect(widget.get_by_role("button", name="Share screen")).to_be_hidden()
        await widget.get_by_role("button", name="Camera").click()
        await wait_until(
            lambda: any(i.colour == "red" for i in emulator.connections[-1].images), 20, "the camera seen"
        )
        await page.wait_for_function(
            "() => window.hostEvents.some((e) => e.type === 'parley-video' && e.agent === 'active')",
            timeout=10_000,
        )
        await widget.get_by_role("button", name="Camera").click()
        await page.wait_for_function(
            "() => window.hostEvents.filter((e) => e.type === 'parley-video').at(-1).state === 'off'",
            timeout=10_000,
        )
        video = await host_events(page, "parley-video")
        states = [e["state"] for e in video]
        assert states[:2] == ["starting", "on"] and states[-1] == "off", states
        assert {e["source"] for e in video if e["state"] == "on"} == {"camera"}
    finally:
        await running.stop()
