"""TURN credentials (coturn's REST-API shared secret), and signaling while Redis is unreachable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time

import aiohttp

from parley.agent.turn_credentials import ice_server_source, turn_credentials
from parley.emulator.server import GeminiEmulator
from parley.processes import start_signaling
from parley.server import start
from parley.settings import Settings
from tests.conftest import make_settings

SECRET = "north-wind-73"
TURN_URLS = ["turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp"]


def check_credentials(server: dict[str, object], ttl_s: float) -> str:
    """The server's credentials are coturn's: HMAC-SHA1 of the username, which ends when it says."""
    username, credential = str(server["username"]), str(server["credential"])
    expiry, _, user = username.partition(":")
    assert user and abs(int(expiry) - (time.time() + ttl_s)) < 5
    expected = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest())
    assert credential == expected.decode()
    assert server["urls"] == TURN_URLS
    return user


def test_credentials_follow_coturns_rest_api_scheme() -> None:
    username, credential = turn_credentials("s3cret", "alice", 600, now=1_700_000_000)
    assert username == "1700000600:alice"
    # echo -n 1700000600:alice | openssl dgst -sha1 -hmac s3cret -binary | base64
    digest = hmac.new(b"s3cret", b"1700000600:alice", hashlib.sha1).digest()
    assert credential == base64.b64encode(digest).decode()
    source = ice_server_source([{"urls": "stun:stun.example.com"}], TURN_URLS, SECRET, 60, "worker-1")
    first, second = source(), source()
    assert first[0] == {"urls": "stun:stun.example.com"}
    assert check_credentials(first[1], 60).startswith("worker-1-")
    assert first[1]["username"] != second[1]["username"]
    assert ice_server_source([], TURN_URLS, None, 60, "w")() == []  # no secret, no TURN


async def test_serve_mints_fresh_turn_credentials_for_each_page_and_call(emulator: GeminiEmulator) -> None:
    running = await start(
        make_settings(turn_secret=SECRET, turn_urls=TURN_URLS, turn_ttl_s=3600), emulator=emulator
    )
    try:
        async with aiohttp.ClientSession() as http:
            pages = []
            for _ in range(2):
                async with http.get(f"http://127.0.0.1:{running.port}/v1/config") as response:
                    assert response.status == 200
                    assert SECRET not in await response.text()
                    pages.append(await response.json())
        users = [check_credentials(page["iceServers"][-1], 3600) for page in pages]
        assert users[0] != users[1] and users[0].startswith("web-")
        assert pages[0]["emulator"] is True
        source = running.worker.ice_server_source
        assert source is not None
        assert check_credentials(source()[-1], 3600).startswith("worker-")
    finally:
        await running.stop()


async def test_signaling_without_redis_is_not_ready_and_answers_503_quickly() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        host="127.0.0.1",
        port=0,
        redis_url=f"redis://127.0.0.1:{port}/0",
        turn_secret=SECRET,
        turn_urls=TURN_URLS,
    )
    running = await start_signaling(settings)
    url = f"http://127.0.0.1:{running.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/readyz") as response:
                assert response.status == 503
            async with http.get(url + "/healthz") as response:
                health = await response.json()
                assert health["redis"] == "unavailable" and health["workers"] == []
            async with http.get(url + "/v1/config") as response:
                check_credentials((await response.json())["iceServers"][-1], settings.turn_ttl_s)
            started = time.monotonic()
            async with http.post(
                url + "/v1/calls", data="v=0\r\n", headers={"Content-Type": "application/sdp"}
            ) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
            assert time.monotonic() - started < 3
            async with http.get(url + "/v1/calls/abc") as response:
                assert response.status == 503
    finally:
        await running.stop()
