"""An agent whose profile says `video = false`, from real Chromium: the join page and the widget show no
Camera or Share screen toggle, offer no video m-line and never ask for a camera, while the default agent
of the same server keeps them. A video offer sent to that agent anyway is answered `inactive`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import Pages, start_server
from tests.browser.test_widget import HostSite, host_events
from tests.browser.test_widget import host_site as host_site  # the fixture
from tests.waiting import wait_until

AGENTS = """
default_agent = "seeing"

[agents.seeing]
system_instruction = "You can see the caller's camera."

[agents.audio]
system_instruction = "Phone support: audio only."
video = false
"""

NO_VIDEO = "This agent does not take video: the call is audio only."


@pytest.fixture
async def served(emulator: GeminiEmulator, tmp_path: Path, host_site: HostSite) -> AsyncIterator[Running]:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    running = await start_server(emulator, agents_file=str(agents), allowed_origins=[host_site.origin])
    host_site.parley = f"http://127.0.0.1:{running.port}"
    try:
        yield running
    finally:
        await running.stop()


async def offered_sdp(page: Page, client: str = "parleyDebug.client") -> str:
    sdp: str = await page.evaluate(f"() => {client}.pc.localDescription.sdp")
    return sdp


async def hang_up(page: Page, running: Running, scope: Any = None) -> None:
    await (scope or page).get_by_role("button", name="Hang up").click()
    await wait_until(lambda: not running.worker.calls, 10, "the call to end")


async def test_the_page_offers_no_video_to_an_agent_without_it(served: Running, pages: Pages) -> None:
    url = f"http://127.0.0.1:{served.port}"
    # The camera is refused by this browser: any getUserMedia for video would end in "camera-denied".
    page = await pages.open(f"{url}/?agent=audio", camera="denied")
    await expect(page.locator("#video-status")).to_have_text(NO_VIDEO, timeout=10_000)
    await expect(page.get_by_role("button", name="Camera")).to_be_hidden()
    await expect(page.get_by_role("button", name="Share screen")).to_be_hidden()
    await page.get_by_role("button", name="Call").click()
    await page.wait_for_function("() => parleyDebug.client.state === 'in-call'", timeout=20_000, polling=100)
    assert "m=video" not in await offered_sdp(page)
    # Asked for the camera anyway (a script, not the hidden button): refused for the agent, not the browser.
    await page.evaluate("() => parleyDebug.client.setVideo('camera')")
    await expect(page.locator("#video-status")).to_have_text(NO_VIDEO)
    assert await page.evaluate("() => parleyDebug.client.video.track") is None
    call = next(iter(served.worker.calls.values()))
    assert call.video is None
    await hang_up(page, served)

    # The server's default agent, in the same browser: the toggles are there and the offer has video.
    page = await pages.open(url)
    await expect(page.get_by_role("button", name="Camera")).to_be_visible()
    await expect(page.get_by_role("button", name="Share screen")).to_be_visible()
    await page.get_by_role("button", name="Call").click()
    await page.wait_for_function("() => parleyDebug.client.state === 'in-call'", timeout=20_000, polling=100)
    assert "m=video" in await offered_sdp(page)
    await expect(page.get_by_role("button", name="Camera")).to_be_enabled()
    await hang_up(page, served)


async def test_a_video_offer_to_an_agent_without_video_is_answered_inactive(
    served: Running, pages: Pages
) -> None:
    """Chromium's own offer with a video m-line (as an older page or another client would send): the
    answer refuses the video (inactive), the call itself goes on with audio, nothing is decoded."""
    url = f"http://127.0.0.1:{served.port}"
    page = await pages.open(f"{url}/?agent=audio")
    answer: dict[str, Any] = await page.evaluate(
        """async () => {
            const pc = new RTCPeerConnection();
            const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
            pc.addTrack(mic.getAudioTracks()[0], mic);
            const camera = await navigator.mediaDevices.getUserMedia({ video: true });
            pc.addTransceiver(camera.getVideoTracks()[0], { direction: 'sendonly' });
            pc.createDataChannel('events');
            await pc.setLocalDescription(await pc.createOffer());
            await new Promise((resolve) => {
                if (pc.iceGatheringState === 'complete') resolve();
                pc.addEventListener('icegatheringstatechange',
                    () => pc.iceGatheringState === 'complete' && resolve());
            });
            const response = await fetch('/v1/calls', { method: 'POST',
                headers: { 'Content-Type': 'application/json' },
                body: JSON.stringify({ sdp: pc.localDescription.sdp, type: 'offer', agent: 'audio' }) });
            const answer = await response.json();
            await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
            window.forced = pc;
            const video = pc.getTransceivers().find((t) => t.receiver.track.kind === 'video');
            return { status: response.status, id: answer.id, sdp: answer.sdp,
                     direction: video.currentDirection };
        }"""
    )
    assert answer["status"] == 201, answer
    assert "a=inactive" in answer["sdp"].split("m=video", 1)[1]
    assert answer["direction"] == "inactive"
    await page.wait_for_function("() => window.forced.connectionState === 'connected'", timeout=20_000)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/calls/{answer['id']}") as response:
        state = await response.json()
    assert state["video"] is None and state["agent"] == "audio"
    call = served.worker.calls[answer["id"]]
    await wait_until(lambda: call.uplink.stats.packets > 50, 20, "the caller's audio")
    await page.evaluate("() => window.forced.close()")
    await wait_until(lambda: not served.worker.calls, 20, "the call to end")


async def test_the_widget_hides_video_for_an_agent_without_it(
    served: Running, host_site: HostSite, pages: Pages
) -> None:
    page = await pages.open(host_site.origin, camera="denied")
    widget = page.locator("parley-call")
    await page.evaluate(
        "() => { const w = document.querySelector('parley-call'); w.setAttribute('video', 'both');"
        " w.setAttribute('agent', 'audio'); }"
    )
    await widget.get_by_role("button", name="Talk to us").click()
    await expect(widget.get_by_role("status")).to_have_text("In call", timeout=20_000)
    await expect(widget.get_by_role("button", name="Camera")).to_be_hidden()
    await expect(widget.get_by_role("button", name="Share screen")).to_be_hidden()
    await expect(widget.locator(".video-status")).to_have_text(NO_VIDEO)
    assert "m=video" not in await offered_sdp(page, "document.querySelector('parley-call').client")
    video = await host_events(page, "parley-video")
    assert video and video[-1]["available"] is False and video[-1]["reason"] == "agent-no-video", video
    await hang_up(page, served, widget)

    # Another agent on the same widget (the attribute changed between calls): its toggles come back.
    await page.evaluate("() => document.querySelector('parley-call').setAttribute('agent', 'seeing')")
    await widget.get_by_role("button", name="Talk to us").click()
    await expect(widget.get_by_role("status")).to_have_text("In call", timeout=20_000)
    await expect(widget.get_by_role("button", name="Camera")).to_be_visible()
    assert "m=video" in await offered_sdp(page, "document.querySelector('parley-call').client")
    await hang_up(page, served, widget)
