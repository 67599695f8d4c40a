"""TURN only: a call whose caller may use nothing but relayed candidates, through a real coturn.

coturn (Debian `coturn`) runs on loopback with the REST-API shared secret (`use-auth-secret`), the scheme
`parley serve` mints credentials with (agent/turn_credentials.py). The caller takes its ICE servers from
`GET /v1/config`, as the page does, and gathers with iceTransportPolicy "relay": every packet of the call
goes through a coturn allocation. Skipped, with the reason, where `turnserver` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.agent.turn_credentials import turn_credentials
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running, start
from tests.audio import best_alignment
from tests.conftest import make_settings

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE
REALM = "parley.test"


@dataclass
class Coturn:
    port: int
    secret: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relay_port_range() -> tuple[int, int]:
    """A small run of relay ports nothing uses now (coturn takes a range, not port 0)."""
    for _ in range(50):
        low = 20000 + secrets.randbelow(2000) * 16
        try:
            with contextlib.ExitStack() as stack:
                for port in range(low, low + 16):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    s.bind(("127.0.0.1", port))
            return low, low + 15
        except OSError:
            continue
    raise RuntimeError("no free run of 16 UDP ports for coturn's relays")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn is not installed: `make test` installs the Debian package `coturn`")
    port = free_udp_port()
    low, high = relay_port_range()
    secret = secrets.token_hex(16)
    log = tmp_path / "turnserver.log"
    config = tmp_path / "turnserver.conf"
    config.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                f"listening-port={port}",
                "relay-ip=127.0.0.1",
                f"min-port={low}",
                f"max-port={high}",
                f"realm={REALM}",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-tcp-relay",
                "allow-loopback-peers",
                "no-multicast-peers",
                "no-cli",
                "no-software-attribute",
                f"userdb={tmp_path / 'turndb'}",
                f"pidfile={tmp_path / 'turnserver.pid'}",
                f"log-file={log}",
                "simple-log",
                "verbose",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Coturn(port, secret, log, process)
    try:
        deadline = time.monotonic() + 10
        while f"UDP listener opened on: 127.0.0.1:{port}" not in server.log_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not start ({process.returncode}):\n{server.log_text()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def serving_with_turn(coturn: Coturn, emulator: GeminiEmulator) -> AsyncIterator[Running]:
    running = await start(
        make_settings(turn_urls=[coturn.url], turn_secret=coturn.secret, turn_ttl_s=600), emulator=emulator
    )
    try:
        yield running
    finally:
        await running.stop()


PEER_USAGE = re.compile(r"peer usage: realm=<[^>]*>, username=<([^>]*)>, rp=(\d+), rb=\d+, sp=(\d+)")


def relayed_packets(log: str, user: str) -> tuple[int, int]:
    """(packets from the peer, packets to the peer) coturn relayed for `user`'s allocations."""
    usage = [(int(rp), int(sp)) for name, rp, sp in PEER_USAGE.findall(log) if name == user]
    return sum(u[0] for u in usage), sum(u[1] for u in usage)


async def page_ice_servers(url: str) -> list[dict[str, Any]]:
    """What the page gets: the configured servers plus TURN with freshly minted credentials."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/config") as response:
        servers: list[dict[str, Any]] = (await response.json())["iceServers"]
        return servers


async def test_call_through_a_turn_relay_only(coturn: Coturn, emulator: GeminiEmulator) -> None:
    async with serving_with_turn(coturn, emulator) as running:
        url = f"http://127.0.0.1:{running.port}"
        ice_servers = await page_ice_servers(url)
        assert coturn.secret not in str(ice_servers)
        user = ice_servers[-1]["username"]
        caller = Caller(url, ice_servers=ice_servers, relay_only=True)
        await caller.connect(timeout_s=15)
        ice = caller.pc.getTransceivers()[0].sender.transport.transport
        try:
            gathered = {c.type for c in ice.iceGatherer.getLocalCandidates()}
            pair = ice._connection._nominated.get(1)  # the candidate pair ICE chose (aioice's)
            caller.say(SPEECH)
            await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 15)
            await asyncio.sleep(0.3)
        finally:
            await caller.hang_up()
        # coturn logs an allocation's traffic when it is released
        for _ in range(40):
            if relayed_packets(coturn.log_text(), user)[0]:
                break
            await asyncio.sleep(0.2)
    log = coturn.log_text()
    # the caller had relayed candidates only, and the call went through one of coturn's relays
    assert gathered == {"relay"}, gathered
    assert pair is not None and pair.local_candidate.type == "relay", pair
    relay = f"{pair.local_candidate.host}:{pair.local_candidate.port}"
    assert f"Local relay addr: {relay}" in log, log[-3000:]
    assert f"user <{user}>: incoming packet ALLOCATE processed, success" in log, log[-3000:]
    # every packet of the call, both ways, went through the relay: about 50 a second each way
    from_peer, to_peer = relayed_packets(log, user)
    assert from_peer > 25 * SPEECH_S and to_peer > 25 * SPEECH_S, (from_peer, to_peer)
    # and the agent was heard through it: the echo of what was said
    _, match = best_alignment(SPEECH, caller.heard.samples())
    assert match > 0.7, f"the echo through the relay does not match (correlation {match:.2f})"


async def test_turn_refuses_credentials_not_minted_with_its_secret(
    coturn: Coturn, emulator: GeminiEmulator
) -> None:
    async with serving_with_turn(coturn, emulator) as running:
        url = f"http://127.0.0.1:{running.port}"
        ice_servers = await page_ice_servers(url)
        username, _ = turn_credentials("not-the-secret", "mallory", 600)
        forged = [*ice_servers[:-1], {**ice_servers[-1], "username": username}]
        caller = Caller(url, ice_servers=forged, relay_only=True)
        try:
            with pytest.raises((TimeoutError, RuntimeError)):
                await caller.connect(timeout_s=3)
        finally:
            await caller.hang_up()
    assert f"user <{username}>: incoming packet ALLOCATE processed, success" not in coturn.log_text()
    assert re.search(rf"user <{username}>: incoming packet .* error 401", coturn.log_text())
