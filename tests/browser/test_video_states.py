"""The join page's video states when the browser, not the page, decides, in real Chromium with no script
standing in for getDisplayMedia: the screen-share picker cancelled (--auto-reject-capture), the camera
denied, and a share ended from the browser's side (the shared tab, picked by the picker with
--auto-select-tab-capture-source-by-title, is closed: the track ends as with the browser's own "Stop
sharing" bar). Each leaves the call going, with the caller's audio still reaching the agent, says what
happened, and leaves the toggles usable."""

from __future__ import annotations

import asyncio

from playwright.async_api import Page, expect

from parley.agent.call import Call
from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import Pages
from tests.browser.test_video import in_call, last_video_event, sender
from tests.browser.test_video import server_settings as server_settings  # the fixture: 2 frames a second
from tests.waiting import wait_until

SHARED_TAB = "Parts list"
REFUSED = "Screen sharing was not allowed."
DENIED = "Camera access was denied. Allow it in the browser's site settings, then turn the camera on again."
SHARING = "Sharing your screen: the agent sees it."
# The shared tab: blue, with a corner that changes every frame so tab capture keeps producing frames
# (a still page is captured only when it changes).
SHARED_PAGE = f"""<!doctype html><title>{SHARED_TAB}</title>
<body style="margin:0;background:rgb(30,60,220);height:100vh">
<div id="tick" style="position:fixed;left:0;top:0;width:8px;height:8px"></div>
<script>
  let n = 0;
  const tick = () => {{ n += 1; document.getElementById('tick').style.background = n % 2 ? '#fff' : '#000';
                        requestAnimationFrame(tick); }};
  requestAnimationFrame(tick);
</script></body>"""


def the_call(server: Running) -> Call:
    calls = list(server.worker.calls.values())
    assert len(calls) == 1
    call: Call = calls[0]
    return call


async def audio_goes_on(server: Running, emulator: GeminiEmulator) -> None:
    """The caller's audio still flows: the agent's uplink and Gemini both get more of it (the fake
    microphone speaks every ~10 s; the agent may hold silence back from Gemini)."""
    call, gemini = the_call(server), emulator.connections[-1]
    packets, received = call.uplink.stats.packets, gemini.audio_bytes_received
    await wait_until(
        lambda: call.uplink.stats.packets > packets + 50 and gemini.audio_bytes_received > received,
        20,
        "the caller's audio to go on reaching the agent",
    )


async def still_usable(page: Page, button: str, message: str) -> None:
    """Pressed again, the toggle asks the browser again (not stuck in "starting") and says so again."""
    status = page.locator("#video-status")
    await page.evaluate("() => { document.getElementById('video-status').textContent = ''; }")
    await page.get_by_role("button", name=button).click()
    await expect(status).to_have_text(message, timeout=10_000)
    await expect(page.get_by_role("button", name=button)).to_have_attribute("aria-pressed", "false")


async def test_a_refused_share_says_so_and_the_call_and_the_camera_go_on(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    page = await pages.open(url, screen="refused")  # the camera is allowed, the picker is cancelled
    await in_call(page)
    screen = page.get_by_role("button", name="Share screen")
    await screen.click()
    await expect(page.locator("#video-status")).to_have_text(REFUSED, timeout=10_000)
    await expect(screen).to_have_attribute("aria-pressed", "false")
    await expect(page.locator("#self-view")).to_be_hidden()
    assert (await sender(page))["track"] is None
    assert await page.evaluate("() => parleyDebug.client.state") == "in-call"
    await audio_goes_on(server, emulator)
    await still_usable(page, "Share screen", REFUSED)
    # The other toggle works in the same call: the camera reaches the agent.
    await page.get_by_role("button", name="Camera").click()
    await expect(page.locator("#video-status")).to_have_text("Camera on: the agent sees it.", timeout=15_000)
    images = emulator.connections[-1].images
    await wait_until(lambda: images and images[-1].colour == "red", 20, "the camera at the emulator")
    assert len(emulator.connections) == 1


async def test_a_denied_camera_says_so_and_the_call_and_the_share_go_on(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    page = await pages.open(url, camera="denied", screen=f"tab:{SHARED_TAB}")
    shared = await page.context.new_page()
    await shared.set_content(SHARED_PAGE)
    await in_call(page)
    camera = page.get_by_role("button", name="Camera")
    await camera.click()
    await expect(page.locator("#video-status")).to_have_text(DENIED, timeout=10_000)
    await expect(camera).to_have_attribute("aria-pressed", "false")
    assert (await sender(page))["track"] is None
    await audio_goes_on(server, emulator)
    await still_usable(page, "Camera", DENIED)
    # Sharing a tab instead works in the same call: the agent sees the blue tab.
    await page.get_by_role("button", name="Share screen").click()
    await expect(page.locator("#video-status")).to_have_text(SHARING, timeout=15_000)
    images = emulator.connections[-1].images
    await wait_until(lambda: images and images[-1].colour == "blue", 20, "the shared tab at the emulator")


async def test_a_share_ended_from_the_browser_says_stopped_and_the_agent_sees_no_more(
    server: Running, url: str, emulator: GeminiEmulator, pages: Pages
) -> None:
    page = await pages.open(url, screen=f"tab:{SHARED_TAB}")
    shared = await page.context.new_page()
    await shared.set_content(SHARED_PAGE)
    await in_call(page)
    screen = page.get_by_role("button", name="Share screen")
    await screen.click()
    await expect(screen).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#video-status")).to_have_text(SHARING, timeout=15_000)
    images = emulator.connections[-1].images
    await wait_until(lambda: len(images) >= 2 and images[-1].colour == "blue", 20, "the tab at the emulator")
    call = the_call(server)
    assert call.video is not None

    # The browser ends the share (the shared tab goes away): its track ends, the page did nothing.
    track = await page.evaluate_handle("() => parleyDebug.client.video.track")
    await shared.close()
    await expect(page.locator("#video-status")).to_have_text("Screen sharing stopped.", timeout=10_000)
    assert await track.evaluate("(t) => t.readyState") == "ended"
    await expect(screen).to_have_attribute("aria-pressed", "false")
    await expect(page.locator("#self-view")).to_be_hidden()
    assert (await sender(page))["track"] is None
    # The agent stops sending Gemini frames (it says "paused"), and the call and its audio go on.
    await last_video_event(page, "paused")
    stopped = len(images)
    await asyncio.sleep(2.0)
    assert len(images) <= stopped + 1, [(i.colour, i.at) for i in images[stopped:]]
    assert await page.evaluate("() => parleyDebug.client.state") == "in-call"
    await audio_goes_on(server, emulator)
    # The toggle works again: the camera, in the same call.
    await page.get_by_role("button", name="Camera").click()
    await wait_until(lambda: images[-1].colour == "red", 20, "the camera at the emulator")
    assert len(emulator.connections) == 1
