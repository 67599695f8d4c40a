"""Browser tests: Debian's Chromium driven by Playwright and Debian's Firefox ESR driven by Marionette,
talking to a real Parley server on loopback.

Chromium's microphone is its fake capture device playing a WAV made from tests/data/speech.wav (it
loops); the camera, when a test asks for one, plays a Y4M of one known colour (CAMERA_RGB). Chromium's
fake screen (getDisplayMedia with --use-fake-device-for-media-stream) is mostly green; a test may instead
have the screen-share picker refused or pick a tab of its own (Pages.open's `screen`). Playwright never
downloads a browser here: it drives /usr/bin/chromium (PARLEY_CHROMIUM). Firefox's microphone is a
PulseAudio virtual source playing the same speech (tests/browser/firefox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from playwright.async_api import Browser, Page, Playwright, async_playwright

from parley.caller import load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running, start
from tests.browser.firefox import Firefox, PulseMic, firefox_missing
from tests.conftest import make_settings
from tests.waiting import wait_until

CHROMIUM = os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SPEECH_WAV = ROOT / "tests" / "data" / "speech.wav"
# Screenshots go to docs/ only when asked (`PARLEY_SCREENSHOTS=docs/screenshots make test`), so a test run
# leaves the checkout as it found it.
SCREENSHOTS = Path(os.environ.get("PARLEY_SCREENSHOTS") or ROOT / "out" / "screenshots")
SCREENSHOTS.mkdir(parents=True, exist_ok=True)

# The fake microphone: LEAD_S of silence, the speech, TAIL_S of silence, again and again. The tail
# leaves room for the emulator's echo (the speech, after 0.5 s of silence) before the next sentence.
LEAD_S = 1.0
TAIL_S = 6.0
# The fake camera: 1280x720 (the page scales it to the server's PARLEY_VIDEO_MAX_SIDE), 10 fps, red.
CAMERA_RGB = (220, 30, 30)
CAMERA_SIZE = (1280, 720)
CAMERA_FPS = 10

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # Chromium leaves loopback out of ICE unless told, and may hide host addresses behind mDNS names.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

PageFactory = Callable[..., Awaitable[Page]]


@pytest.fixture(scope="session")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/speech.wav with silence around it, as Chromium's fake capture wants it."""
    with wave.open(str(SPEECH_WAV), "rb") as source:
        assert (source.getnchannels(), source.getsampwidth()) == (1, 2)
        rate = source.getframerate()
        speech = source.readframes(source.getnframes())
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * int(rate * LEAD_S)) + speech + bytes(2 * int(rate * TAIL_S)))
    return path


@pytest.fixture(scope="session")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Y4M of CAMERA_RGB frames, as --use-file-for-fake-video-capture wants it (it loops)."""
    width, height = CAMERA_SIZE
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = CAMERA_RGB
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    planes = b"".join(
        np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:, : plane.width].tobytes()
        for plane in frame.planes
    )
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{CAMERA_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(CAMERA_FPS):
            out.write(b"FRAME\n" + planes)
    return path


def loopback_only(sdp: str) -> str:
    """Keep the IPv4 loopback candidates of an offer: the tests send to this machine's loopback only."""
    lines = sdp.split("\r\n")
    kept = [
        line
        for line in lines
        if not line.startswith("a=candidate:") or re.search(r" udp \d+ 127\.0\.0\.1 ", line, re.IGNORECASE)
    ]
    return "\r\n".join(kept)


def offers_on_loopback(running: Running) -> Running:
    """Make the server answer only the loopback candidates of each offer (tests/conftest.py has it offer
    127.0.0.1 only): whatever else Chromium gathers on this machine is never a target. Done on the
    server side, as browser request interception would also answer CORS preflights by itself."""
    worker = running.worker
    for name in ("create_call", "resume_call"):
        method = getattr(worker, name, None)
        if method is not None:
            setattr(worker, name, _filter_offers(method))
    return running


def _filter_offers(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def filtered(*args: Any, **kwargs: Any) -> Any:
        args = tuple(loopback_only(a) if isinstance(a, str) and a.startswith("v=0") else a for a in args)
        return await method(*args, **kwargs)

    return filtered


@pytest.fixture(autouse=True)
def loopback_peers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a firewall in front of the server would: ICE checks from anything but loopback go unanswered.
    Chromium also checks from its other addresses to the server's 127.0.0.1; without this, the server
    may answer one of them and the call run over an address other than loopback."""
    request_received = aioice.ice.Connection.request_received

    def loopback_request_received(self: aioice.ice.Connection, message: Any, addr: Any, *args: Any) -> None:
        if ipaddress.ip_address(addr[0]).is_loopback:
            request_received(self, message, addr, *args)

    monkeypatch.setattr(aioice.ice.Connection, "request_received", loopback_request_received)


@pytest.fixture
async def server(server: Running) -> Running:
    """tests/conftest.py's server, answering loopback candidates only."""
    return offers_on_loopback(server)


# The audio inbound-rtp's counters, as a JavaScript async function (getStats names both browsers share).
INBOUND_AUDIO = """async () => {
    const stats = await parleyDebug.client.pc.getStats();
    let found = null;
    stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") found = s; });
    return found && {packets: found.packetsReceived, concealed: found.concealedSamples,
                     total: found.totalSamplesReceived};
}"""


async def start_server(emulator: GeminiEmulator, **settings: Any) -> Running:
    """A server of its own (settings as make_settings takes them), answering loopback candidates only."""
    return offers_on_loopback(await start(make_settings(**settings), emulator=emulator))


class Pages:
    """Launches Chromium (one per page: each test may need other flags) and opens pages in it."""

    def __init__(self, playwright: Playwright, mic: Path, camera: Path) -> None:
        self.playwright = playwright
        self.mic = mic
        self.camera = camera
        self.browsers: list[Browser] = []
        self.console: list[str] = []

    async def open(
        self,
        url: str,
        microphone: str = "granted",
        camera: str = "granted",
        phone: tuple[int, int] | None = None,
        screen: str | None = None,
    ) -> Page:
        """microphone: "granted" (the fake one), "denied" (the user says no) or "none" (no device).
        camera (with the microphone granted): "granted" (the Y4M) or "denied" (the user says no).
        screen, what the screen-share picker does: "fake" (the default with the camera granted:
        Chromium's fake screen, no picker), "refused" (the default with the camera denied: the user
        cancels the picker, --auto-reject-capture), or "tab:TITLE" (the user picks the tab of that
        title, which the test opens: closing it ends the share from the browser's side, as the
        browser's own "Stop sharing" does).
        phone: a phone's CSS viewport (390x844, 360x800), with touch and mobile emulation."""
        args = list(CHROMIUM_ARGS)
        permissions = ["microphone"] if microphone != "denied" else []
        screen = screen or ("fake" if camera == "granted" else "refused")
        if microphone == "granted" and camera == "granted":
            permissions.append("camera")
            if screen == "fake":
                args.append("--use-fake-ui-for-media-stream")  # grants everything, screen included
        if screen == "refused":
            args.append("--auto-reject-capture")  # the picker's Cancel (the camera, unless granted, too)
        elif screen.startswith("tab:"):
            args.append(f"--auto-select-tab-capture-source-by-title={screen[4:]}")
        if microphone == "granted":
            args += [
                f"--use-file-for-fake-audio-capture={self.mic}",
                f"--use-file-for-fake-video-capture={self.camera}",
            ]
        elif microphone == "none":
            args.remove("--use-fake-device-for-media-stream")
            args.append("--use-fake-ui-for-media-stream")
        browser = await self.playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        self.browsers.append(browser)
        if phone is None:
            desktop = {"width": 1000, "height": 760}
            context = await browser.new_context(permissions=permissions, viewport=desktop)
        else:
            context = await browser.new_context(
                permissions=permissions,
                viewport={"width": phone[0], "height": phone[1]},
                device_scale_factor=3,
                is_mobile=True,
                has_touch=True,
            )
        page = await context.new_page()
        if screen == "refused":
            # Headless Chromium (156) answers --auto-reject-capture only with another tab open: alone,
            # the picker never answers. Any tab does; the page under test stays in front.
            await context.new_page()
            await page.bring_to_front()
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        await page.goto(url)
        return page

    async def close(self) -> None:
        for browser in self.browsers:
            await browser.close()
        if self.console:
            print("browser console:\n  " + "\n  ".join(self.console))


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def pages(chromium: str, fake_mic: Path, fake_camera: Path) -> AsyncIterator[Pages]:
    async with async_playwright() as playwright:
        opened = Pages(playwright, fake_mic, fake_camera)
        try:
            yield opened
        finally:
            await opened.close()


async def client_state(page: Page, expression: str = "parleyDebug.client") -> dict[str, Any]:
    """The page's ParleyClient, as plain data."""
    result: dict[str, Any] = await page.evaluate(
        f"""() => {{
            const c = {expression};
            return {{ state: c.state, reason: c.reason, callId: c.callId, turns: c.turns,
                      stats: c.stats, agentLoudMs: c.debug.agentLoudMs }};
        }}"""
    )
    return result


def cut_network(pc: RTCPeerConnection) -> None:
    """Drop every packet of the server's side of one peer connection, both ways, as if the caller's
    network had gone: nothing is closed, so neither side hears a goodbye."""
    ice_transports = {
        t.receiver.transport.transport for t in pc.getTransceivers() if t.receiver.transport is not None
    }
    if pc.sctp is not None:
        ice_transports.add(pc.sctp.transport.transport)
    for ice in ice_transports:
        for protocol in ice._connection._protocols:  # aioice's sockets
            setattr(protocol, "datagram_received", lambda data, addr: None)  # noqa: B010
            setattr(protocol.transport, "sendto", lambda data, addr=None: None)  # noqa: B010


@pytest.fixture(scope="session")
def pulse_mic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseMic]:
    """Firefox's microphone: a PulseAudio daemon of the tests' own playing the test speech."""
    missing = firefox_missing()
    if missing:
        pytest.fail(missing)
    speech = load_wav(str(SPEECH_WAV))
    lead, tail = np.zeros(int(48000 * LEAD_S), np.int16), np.zeros(int(48000 * TAIL_S), np.int16)
    mic = PulseMic(tmp_path_factory.mktemp("pulse"), np.concatenate([lead, speech, tail]).tobytes())
    try:
        yield mic
    finally:
        mic.stop()


@pytest.fixture(scope="session")
def firefox_session(tmp_path_factory: pytest.TempPathFactory, pulse_mic: PulseMic) -> Iterator[Firefox]:
    """One Firefox ESR for every Firefox test: it takes seconds to start."""
    browser = Firefox(tmp_path_factory.mktemp("firefox"), pulse_mic.env)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
async def firefox(firefox_session: Firefox) -> AsyncIterator[Firefox]:
    """The Firefox of the session, on a blank page again after each test."""
    try:
        yield firefox_session
    finally:
        with contextlib.suppress(Exception):
            await firefox_session.open("about:blank")


async def assert_server_hears_nothing(call: Any, seconds: float) -> None:
    """The call's voice detector on the server hears the caller stop within 2 s and stay silent for
    `seconds` more (sampled every 50 ms): what muting must do while the user goes on speaking."""
    await wait_until(lambda: not call.vad.speaking, 2, "the server to stop hearing the muted user")
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert not call.vad.speaking, "the server heard a muted microphone"
        await asyncio.sleep(0.05)
