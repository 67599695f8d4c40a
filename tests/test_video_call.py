"""Whole video calls: an aiortc caller with a synthetic camera, `parley serve`, the real SDK, the emulator.

The emulator decodes every frame and says in its reply transcript what the last one showed, so these
tests see a colour go from the caller's camera through RTP, the agent's decoder, the JPEG encoder and
the Gemini socket into the model.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration
from parley.agent.metrics import parse_histograms
from parley.caller import RATE, Caller, load_wav
from parley.camera import ColourCamera
from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE
FPS = 2.0


@pytest.fixture
def server_settings(emulator: GeminiEmulator) -> dict[str, object]:
    emulator.options.playout_speed = 4.0  # replies finish quickly
    return {"video_fps": FPS, "video_idle_fps": FPS}


def agent_text(caller: Caller, after: int = 0) -> str:
    return "".join(
        e.get("text", "") for e in caller.events[after:] if e["type"] == "transcript" and e["role"] == "agent"
    )


async def test_the_model_sees_the_camera_at_the_set_rate(url: str, emulator: GeminiEmulator) -> None:
    camera = ColourCamera("red", 1280, 720, fps=10)
    caller = Caller(url, camera=camera)
    await caller.connect()
    try:
        await wait_until(lambda: len(emulator.connections[-1].images) >= 3, 20, "the first frames")
        images = emulator.connections[-1].images
        # The rate over the next six frames: never above the set rate; below it only as far as a busy
        # machine makes frames miss their interval (a fresh frame or none), not a stalled sampler.
        start, count = time.time(), len(images)
        await wait_until(lambda: len(images) >= count + 6, 6 / FPS * 4, "six more frames")
        rate = (len(images) - count) / (time.time() - start)
        assert FPS * 0.3 <= rate <= FPS * 1.1, rate
        assert {(i.width, i.height, i.colour) for i in images} == {(768, 432, "red")}
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 20)
        assert "I see a 768x432 mostly red image" in agent_text(caller)
        # The camera turns to blue: the model sees blue within one interval, and says so.
        camera.colour = "blue"
        changed = time.time()
        await wait_until(lambda: images[-1].colour == "blue", 10, "a blue frame at the emulator")
        assert next(i for i in images if i.colour == "blue").at - changed < 1 / FPS + 0.5
        events = len(caller.events)
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 20, after=events)
        assert "mostly blue" in agent_text(caller, events)
        # Camera off (the track sends nothing): no frames; on again: frames resume at once.
        camera.pause()
        await wait_until(lambda: any(e.get("state") == "paused" for e in caller.events), 10, "video paused")
        paused = len(images)
        await asyncio.sleep(2.0)
        # at most the one frame already on its way to Gemini when the pause was told; then nothing
        assert len(images) <= paused + 1
        paused = len(images)
        camera.colour = "green"
        camera.resume()
        resumed = time.time()
        await wait_until(lambda: len(images) > paused, 10, "frames after the camera came back")
        assert images[paused].colour == "green" and images[paused].at - resumed < 1.0
        state = await caller.call_state()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            metrics = parse_histograms(await response.text())
    finally:
        await caller.hang_up()
    assert metrics["parley_video_frames_total"] >= len(images) - 1
    assert metrics["parley_video_input_tokens_total"] == 256 * metrics["parley_video_frames_total"]
    assert metrics["parley_video_seconds_total"] > 3
    video = state["video"]
    assert video["frames_sent"] >= len(images) - 1
    assert video["input_tokens"] == 256 * video["frames_sent"]
    assert video["seconds"] > 3


async def test_a_new_gemini_connection_sees_the_newest_frame_at_once(
    emulator: GeminiEmulator, url: str
) -> None:
    emulator.options.goaway_after_s = 3.0
    emulator.options.goaway_time_left_s = 1.0
    camera = ColourCamera("magenta", 640, 360, fps=8)
    caller = Caller(url, camera=camera)
    await caller.connect()
    try:
        await wait_until(lambda: len(emulator.connections) >= 2, 20, "the connection after goAway")
        emulator.options.goaway_after_s = None
        second = emulator.connections[1]
        await wait_until(lambda: len(second.images) >= 3, 20, "frames on the new connection")
    finally:
        await caller.hang_up()
    assert second.images[0].colour == "magenta"
    assert second.images[0].at - second.started_at < 1.0  # shown at once, not after a sampling wait


def offer_with(kinds: list[str]) -> RTCPeerConnection:
    pc = RTCPeerConnection(rtc_configuration([]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly" if kind == "video" else "sendrecv")
    return pc


@pytest.mark.parametrize(
    ("kinds", "says"),
    [(["video"], "no audio"), (["audio", "video", "video"], "2 video m-lines")],
    ids=["video-only", "two-videos"],
)
async def test_offers_video_cannot_take_are_refused(
    server: Running, url: str, kinds: list[str], says: str
) -> None:
    pc = offer_with(kinds)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/calls", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as response,
        ):
            body = await response.json()
            assert response.status == 422, body
    finally:
        await pc.close()
    assert says in body["error"]
    assert not server.worker.calls  # nothing left behind
