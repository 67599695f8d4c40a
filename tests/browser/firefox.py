"""Debian's Firefox ESR for the browser tests, driven through its own Marionette protocol.

There is no geckodriver to download here: Firefox starts with `--marionette` and `marionette-driver`
(PyPI) speaks the protocol. The profile is fresh for each test session, with prefs that let a page use
the microphone without asking, play audio without a gesture, and gather loopback ICE candidates.

The microphone is real capture through PulseAudio: a daemon of the test session's own (socket and
state in a temporary directory; no system or user daemon is touched), a null sink `mic_feed` into which
`pacat` plays the test speech (silence, the sentence, silence, looping, paced by the sink's clock), and
the default source `mic`, remapped from that sink's monitor. The agent's voice goes to a null sink.

Marionette is synchronous: every call into it runs on a thread, so the server, which lives in the
test's event loop, keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marionette_driver.marionette import Marionette

FIREFOX = os.environ.get("PARLEY_FIREFOX", "/usr/bin/firefox-esr")

PREFS: dict[str, Any] = {
    "media.navigator.permission.disabled": True,  # getUserMedia without the permission prompt
    "media.navigator.streams.fake": False,  # the real (PulseAudio) microphone
    "media.autoplay.default": 0,  # allow audible autoplay
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # Firefox leaves loopback out of ICE unless told, and may hide host addresses behind mDNS names.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "devtools.console.stdout.content": True,  # page console messages on stdout, where the tests read them
    # Quiet: nothing phones home or opens a first-run page in the middle of a test.
    "app.update.disabledForTesting": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.aboutwelcome.enabled": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.newtabpage.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.backup.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
}

PULSE_CONFIG = """
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=speakers
load-module module-null-sink sink_name=mic_feed
load-module module-remap-source master=mic_feed.monitor source_name=mic {mic_properties}
set-default-sink speakers
set-default-source mic
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PulseMic:
    """A PulseAudio daemon of our own whose default source plays `pcm` (48 kHz mono s16) in a loop."""

    def __init__(self, directory: Path, pcm: bytes) -> None:
        self.directory = directory
        self.socket = directory / "native"
        self.env = {
            **os.environ,
            "HOME": str(directory),
            "XDG_RUNTIME_DIR": str(directory),
            "PULSE_SERVER": f"unix:{self.socket}",
        }
        config = directory / "default.pa"
        properties = "source_properties=device.description=Test-microphone"
        config.write_text(PULSE_CONFIG.format(socket=self.socket, mic_properties=properties))
        self.daemon = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1",
             "--use-pid-file=no", "--log-target=stderr"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ready()
        self.player = subprocess.Popen(
            ["pacat", "--playback", "--device=mic_feed", "--format=s16le", "--rate=48000",
             "--channels=1", "--raw", "--latency-msec=40"],
            env=self.env,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        self._pcm = pcm
        threading.Thread(target=self._feed, args=(self.player,), name="pulse-mic", daemon=True).start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("pulseaudio exited at start")
            ok = subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError("pulseaudio did not start")

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    @contextlib.contextmanager
    def headset(self) -> Iterator[None]:
        """A headset plugged in: a second source (Test-headset) playing the same speech becomes the
        default, as PulseAudio makes a newly plugged headset's microphone; unplugged at the end."""
        sink = self.pactl("load-module", "module-null-sink", "sink_name=headset_feed")
        source = self.pactl(
            "load-module", "module-remap-source", "master=headset_feed.monitor", "source_name=headset",
            "source_properties=device.description=Test-headset",
        )  # fmt: skip
        player = subprocess.Popen(
            ["pacat", "--playback", "--device=headset_feed", "--format=s16le", "--rate=48000",
             "--channels=1", "--raw", "--latency-msec=40"],
            env=self.env,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        threading.Thread(target=self._feed, args=(player,), name="pulse-headset", daemon=True).start()
        self.pactl("set-default-source", "headset")
        try:
            yield
        finally:
            self.pactl("set-default-source", "mic")
            player.kill()
            player.wait(5)
            self.pactl("unload-module", source)
            self.pactl("unload-module", sink)

    def _feed(self, player: subprocess.Popen[bytes]) -> None:
        stdin = player.stdin
        assert stdin is not None
        with contextlib.suppress(OSError, ValueError):
            while True:  # pacat blocks when its buffer is full: the sink's clock paces the loop
                stdin.write(self._pcm)
                stdin.flush()

    def stop(self) -> None:
        for process in (self.player, self.daemon):
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()


class Firefox:
    """One headless Firefox with a fresh profile, and its Marionette session."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        profile = directory / "profile"
        profile.mkdir()
        port = free_port()
        prefs = {**PREFS, "marionette.port": port}
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
        )
        self.console: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [FIREFOX, "--marionette", "--headless", "--no-remote", "--profile", str(profile), "about:blank"],
            env={**env, "MOZ_HEADLESS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read_output, name="firefox-output", daemon=True).start()
        self.client = Marionette(host="127.0.0.1", port=port)
        self.client.raise_for_port(90)
        self.client.start_session()
        self.client.timeout.script = 30

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._lock:
                self.console.append(line)

    def page_errors(self, origin: str) -> list[str]:
        """Console errors and uncaught exceptions of pages from `origin` (Firefox's own chrome code
        reports on the same stream: those are not the page's)."""
        with self._lock:
            lines = list(self.console)
        return [
            line
            for line in lines
            if origin in line and ("console.error" in line or "JavaScript error" in line)
        ]

    async def run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, method), *args, **kwargs)

    async def open(self, url: str, width: int = 1000, height: int = 760) -> None:
        await self.run("set_window_rect", width=width, height=height)
        await self.run("navigate", url)

    async def js(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: `return ...`) in the page's own scope."""
        return await self.run("execute_script", script, script_args=list(args), sandbox=None)

    async def wait_for(self, condition: str, timeout_s: float, what: str) -> None:
        """Wait until the JS expression `condition` is true in the page."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # mid-navigation, the page may not be there yet
                if await self.js(f"return Boolean({condition});"):
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"Firefox: timed out after {timeout_s} s waiting for {what}")

    async def click(self, css: str) -> None:
        """A real click (Marionette's synthesized pointer events), as a user's."""
        element = await self.run("find_element", "css selector", css)
        await asyncio.to_thread(element.click)

    async def click_in_shadow(self, host: str, css: str) -> None:
        element = await self.run("find_element", "css selector", host)
        root = await asyncio.to_thread(lambda: element.shadow_root)
        inner = await asyncio.to_thread(root.find_element, "css selector", css)
        await asyncio.to_thread(inner.click)

    async def text(self, css: str) -> str:
        return str(await self.js("return document.querySelector(arguments[0])?.textContent ?? null;", css))

    async def screenshot(self, path: Path) -> None:
        png = await self.run("screenshot", format="binary", full=True)
        await asyncio.to_thread(path.write_bytes, png)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_session()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def firefox_missing() -> str | None:
    for program in (FIREFOX, "pulseaudio", "pacat", "pactl"):
        if shutil.which(program) is None:
            return f"{program} is not installed (make test-system-deps installs firefox-esr and pulseaudio)"
    return None
