"""The browser's share of the delay: mouth-to-ear through `parley serve --backend loopback` in real browsers.

    python -m bench.browser [--rounds 3] [--seconds 10] [--browsers chromium,firefox] [--impaired]
    (also the `browser` part of `make bench`, one round of the Chromium settings)

The microphone plays 20 ms tone bursts every 500 ms: Chromium's fake capture device, or in Firefox a
PulseAudio source fed the same bursts (tests/browser/firefox.py; Firefox driven over Marionette). In
the page, one AudioContext taps the microphone track and the agent's remote track with two
ScriptProcessor nodes, so both onsets are on the audio clock of one context: mouth-to-ear is a burst's
onset on the remote track minus its onset on the microphone track (capture buffering, the encoder,
both network hops, the whole agent, the jitter buffer and the decoder, up to where the page can hear
it). getStats gives the jitter buffer's delay, target and minimum over the window, and Chromium's
media-playout its playout delay (bench/browser_page.py has the page's side).

Every setting (bench/browser_page.py SETTINGS) is a fresh call; the settings are interleaved, a round
at a time with the order rotated each round, so a burst of load on this shared machine falls on all of
them. `--impaired` runs the server in a network namespace (tests/netns.py) with each direction's UDP
packets lost (1 %) and jittered (30 +- 30 ms), and reports the concealed samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.browser_page import (
    FINISH_JS,
    MUNGE_JS,
    SETTINGS,
    START_JS,
    TARGET_JS,
    Setting,
    burst_pcm,
    burst_wav,
    row,
    script_body,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]  # fmt: skip
# Firefox holds about 2 s of audio when playout starts and drains it slowly: measure after it has.
SETTLE_S = {"chromium": 2.0, "firefox": 12.0}
ROOT = Path(__file__).resolve().parent.parent


class ChromiumPage:
    """One Playwright page per call, in a fresh browser context."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.context: Any = None
        self.page: Any = None

    async def open(self, url: str) -> None:
        self.context = await self.browser.new_context(permissions=["microphone"])
        self.page = await self.context.new_page()
        await self.page.goto(url)

    async def call(self, function: str, arg: Any = None) -> Any:
        return await self.page.evaluate(function, arg)

    async def wait_for(self, condition: str, timeout_s: float) -> None:
        await self.page.wait_for_function(f"() => {condition}", timeout=timeout_s * 1000)

    async def click(self, css: str) -> None:
        await self.page.click(css)

    async def close(self) -> None:
        await self.context.close()


class FirefoxPage:
    """The one Firefox's tab, navigated afresh for each call (a new page, a new peer connection)."""

    def __init__(self, firefox: Any) -> None:
        self.firefox = firefox

    async def open(self, url: str) -> None:
        await self.firefox.open(url)

    async def call(self, function: str, arg: Any = None) -> Any:
        return await self.firefox.js(script_body(function), arg)

    async def wait_for(self, condition: str, timeout_s: float) -> None:
        await self.firefox.wait_for(condition, timeout_s, condition)

    async def click(self, css: str) -> None:
        await self.firefox.click(css)

    async def close(self) -> None:
        await self.firefox.open("about:blank")


async def one_call(
    page: Any, url: str, setting: Setting, settle_s: float, seconds: float, stage: list[str]
) -> tuple[dict[str, Any], Any]:
    """One fresh call with `setting`, measured; `stage` says how far it got (for a call that hangs)."""
    stage[:] = ["load"]
    await page.open(url)
    await page.wait_for("typeof parleyDebug === 'object' && !document.querySelector('#call').disabled", 20)
    await page.call(MUNGE_JS, asdict(setting))
    stage[:] = ["connect"]
    await page.click("#call")
    await page.wait_for("parleyDebug.client.state === 'in-call'", 30)
    applied = None
    if setting.jitter_buffer_target_ms is not None:
        # false: this browser has no jitterBufferTarget; else the value each audio receiver now has
        stage[:] = ["jitterBufferTarget"]
        applied = await page.call(TARGET_JS, setting.jitter_buffer_target_ms)
    stage[:] = ["settle"]
    await asyncio.sleep(settle_s)
    stage[:] = ["measure"]
    await page.call(START_JS)
    await asyncio.sleep(seconds)
    stage[:] = ["measure's end"]
    result = await page.call(FINISH_JS)
    stage[:] = ["hang up"]
    await page.click("#hangup")
    await page.close()
    return result, applied


@contextlib.asynccontextmanager
async def chromium_pages() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        mic = Path(tmp) / "bursts.wav"
        burst_wav(mic)
        args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={mic}"]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                yield lambda: ChromiumPage(browser)
            finally:
                await browser.close()


@contextlib.asynccontextmanager
async def firefox_pages() -> AsyncIterator[Any]:
    from tests.browser.firefox import Firefox, PulseMic

    with tempfile.TemporaryDirectory() as tmp:
        mic = await asyncio.to_thread(PulseMic, Path(tmp), burst_pcm())
        try:
            firefox = await asyncio.to_thread(Firefox, Path(tmp), mic.env)
            try:
                yield lambda: FirefoxPage(firefox)
            finally:
                # first the process: a Firefox that stopped answering would hold Marionette's goodbye 360 s
                firefox.process.terminate()
                await asyncio.to_thread(firefox.close)
        finally:
            mic.stop()


OPENERS = {"chromium": chromium_pages, "firefox": firefox_pages}
# Firefox 153, a second call in the same browser with jitterBufferTarget set: the measurement's script
# never returned (seen in every round, never on a first call), so every Firefox call gets a new Firefox.
FRESH_BROWSER_PER_CALL = {"firefox"}


async def measure(
    url: str, seconds: float, rounds: int = 1, browsers: tuple[str, ...] = ("chromium",),
    settings: tuple[str, ...] = tuple(SETTINGS), **extra: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """`rounds` rounds of every setting in every browser, interleaved: a fresh call each. A call that
    fails is a row that says so, and the browser is started afresh (a Firefox that stopped answering
    would otherwise fail every call after it)."""
    rows = []
    for name in browsers:
        plan = [
            (round_no, key)
            for round_no in range(1, rounds + 1)
            for key in settings[(round_no - 1) % len(settings) :] + settings[: (round_no - 1) % len(settings)]
        ]
        while plan:
            async with contextlib.AsyncExitStack() as stack:
                new_page = await stack.enter_async_context(OPENERS[name]())
                while plan:
                    round_no, key = plan.pop(0)
                    setting = SETTINGS[key]
                    load = os.getloadavg()[0]
                    stage: list[str] = []
                    call = one_call(new_page(), url, setting, SETTLE_S[name], seconds, stage)
                    try:
                        result, applied = await asyncio.wait_for(call, SETTLE_S[name] + seconds + 90)
                    except Exception as exc:
                        failed = {"browser": name, "setting": setting.name, "round": round_no}
                        rows.append({**failed, "error": repr(exc)[:300], "stage": stage})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                        break
                    out = row(name, setting, round_no, result, load_average=round(load, 2), **extra)
                    if setting.jitter_buffer_target_ms is not None:
                        out["jitter_buffer_target_applied"] = applied
                    rows.append(out)
                    print(json.dumps(out), file=sys.stderr, flush=True)
                    if name in FRESH_BROWSER_PER_CALL:
                        break
    return rows


# --- the impaired network: the server in a namespace, its UDP lost and jittered -------------------


def _forward(listener: Any, target: tuple[str, int]) -> None:
    """Accept on `listener` and splice each connection to `target`: the page loads from 127.0.0.1
    (a secure context, so it may use the microphone) while the server lives in the namespace."""
    import socket

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(target)
        except OSError:  # the server is not up yet
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


@contextlib.contextmanager
def impaired_server(port: int, loss: float, delay_ms: float, jitter_ms: float) -> Iterator[str]:
    """`parley serve --backend loopback` inside a namespace whose UDP is impaired both ways; the URL
    (on 127.0.0.1, forwarded) the browser opens. Its media goes over the veth, to the namespace's
    address: the only one the server offers."""
    import socket

    from tests.netns import Link, link_unavailable

    reason = link_unavailable()
    if reason is not None:
        raise SystemExit(f"--impaired needs network namespaces: {reason}")
    with Link() as link:
        # as bench/run.py's start_server has it, offering only the namespace's address
        env = {**os.environ, "PARLEY_ICE_HOST_ADDRESSES": link.peer_address, "PARLEY_NO_MEDIA_TIMEOUT": "30",
               "PARLEY_RATE_LIMIT": "0", "PARLEY_DATABASE_URL": "none"}  # fmt: skip
        command = [
            sys.executable,
            "-m",
            "parley.cli",
            "--log-level",
            "WARNING",
            "serve",
            "--backend",
            "loopback",
            "--host",
            link.peer_address,
            "--port",
            str(port),
            "--allow-unauthenticated",
        ]  # fmt: skip (a namespace only this machine reaches)
        server = subprocess.Popen(link.exec_args(*command), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=_forward, args=(listener, (link.peer_address, port)), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=5).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server in the namespace did not start") from None
                    time.sleep(0.3)
            for direction in ("up", "down"):
                link.impair(direction, loss=loss, delay_ms=delay_ms, jitter_ms=jitter_ms)
            yield url
            print(json.dumps({"link": link.backend, **link.stats()}), file=sys.stderr, flush=True)
        finally:
            listener.close()
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    from bench.run import start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of bursts measured per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--browsers", default="chromium,firefox")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--impaired", action="store_true", help="1 %% loss, 30 +- 30 ms each way (netns)")
    args = parser.parse_args()
    browsers = tuple(args.browsers.split(","))
    settings = tuple(args.settings.split(","))
    kwargs: dict[str, Any] = {"rounds": args.rounds, "browsers": browsers, "settings": settings}
    if args.impaired:
        with impaired_server(18243, loss=0.01, delay_ms=30, jitter_ms=30) as url:
            rows = asyncio.run(measure(url, args.seconds, network="1 % loss, 30 +- 30 ms", **kwargs))
    else:
        server = start_server("loopback", 18241)
        try:
            rows = asyncio.run(measure(server.url, args.seconds, **kwargs))
        finally:
            server.stop()
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
