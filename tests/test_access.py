"""Who may start a call: join tokens, rate limits, call length, public binding; and secrets stay secret."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from parley.caller import Caller
from parley.emulator.server import GeminiEmulator
from parley.server import start
from parley.signaling.access import RateLimiter, TokenError, mint_join_token, verify_join_token
from tests.conftest import make_settings
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "join-secret-for-tests-9f8e7d6c5b4a"


def test_tokens_verify_only_when_signed_fresh_and_whole() -> None:
    token = mint_join_token(SECRET, ttl_s=60, max_seconds=30, uses=2, subject="alice")
    claims = verify_join_token(SECRET, token)
    assert claims.subject == "alice" and claims.max_seconds == 30 and claims.uses == 2
    with pytest.raises(TokenError, match="invalid"):
        verify_join_token("another-secret", token)
    payload, signature = token.split(".")
    with pytest.raises(TokenError, match="invalid"):
        verify_join_token(SECRET, payload[:-2] + "xx." + signature)
    with pytest.raises(TokenError, match="expired"):
        verify_join_token(SECRET, mint_join_token(SECRET, ttl_s=10, now=time.time() - 60))
    for junk in ("", "abc", "a.b.c", "..."):
        with pytest.raises(TokenError):
            verify_join_token(SECRET, junk)


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(calls=2, per_s=10)
    assert limiter.take("a", now=0) == 0 and limiter.take("a", now=0) == 0
    assert limiter.take("a", now=0) == pytest.approx(5.0)
    assert limiter.take("b", now=0) == 0  # per client
    assert limiter.take("a", now=5.0) == 0


async def post_offer(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/calls",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp", **(headers or {})},
            ) as r:
                body = await r.text()
                if r.status == 201:
                    async with http.delete(url + r.headers["Location"]):
                        pass
                return r.status, dict(r.headers), body
    finally:
        await pc.close()


async def test_join_tokens_are_required_when_a_secret_is_set(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(join_secret=SECRET), emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        status, headers, body = await post_offer(url)
        assert (
            status == 401
            and "join token is required" in body
            and headers["WWW-Authenticate"].startswith("Bearer")
        )
        status, _, body = await post_offer(url, {"Authorization": "Bearer not-a-token"})
        assert status == 401 and "malformed" in body
        forged = mint_join_token("some-other-secret")
        status, _, body = await post_offer(url, {"Authorization": f"Bearer {forged}"})
        assert status == 401 and "invalid" in body
        once = mint_join_token(SECRET, uses=1)
        status, _, _ = await post_offer(url, {"Authorization": f"Bearer {once}"})
        assert status == 201
        status, _, body = await post_offer(url, {"Authorization": f"Bearer {once}"})
        assert status == 403 and "used up" in body
        assert running.worker.calls_started == 1
    finally:
        await running.stop()


async def test_a_token_limits_the_call_length(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(join_secret=SECRET), emulator=emulator)
    caller = Caller(f"http://127.0.0.1:{running.port}", token=mint_join_token(SECRET, max_seconds=2))
    try:
        await caller.connect()
        ended = await caller.wait_for_event("ended", timeout_s=8)
        assert ended["reason"] == "max_duration"
        # the event leaves at the start of the teardown, the count is made at its end
        await wait_until(lambda: running.worker.calls_ended == {"max_duration": 1}, 10, "the call to end")
    finally:
        await caller.hang_up()
        await running.stop()


async def test_call_setups_are_rate_limited_per_client(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(rate_limit="3/60"), emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        statuses = [(await post_offer(url))[0] for _ in range(3)]
        assert statuses == [201, 201, 201]
        status, headers, body = await post_offer(url)
        assert status == 429 and int(headers["Retry-After"]) > 0 and "too many" in body
    finally:
        await running.stop()


@pytest.mark.parametrize(
    "command", [["serve"], ["signaling", "--redis", "redis://127.0.0.1:1/0"]], ids=["serve", "signaling"]
)
def test_servers_refuse_to_listen_publicly_without_a_secret(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_JOIN_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "parley.cli", *command, "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "PARLEY_JOIN_SECRET" in result.stderr and "--allow-unauthenticated" in result.stderr


def test_parley_token_mints_what_the_server_accepts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "parley.cli", "token", "--ttl", "60", "--uses", "1"],
        cwd=ROOT,
        env={**os.environ, "PARLEY_JOIN_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert verify_join_token(SECRET, result.stdout.strip()).uses == 1


async def test_no_secret_reaches_a_response_or_a_log_line(emulator: GeminiEmulator, tmp_path: Path) -> None:
    gemini_key = "sk-test-gemini-key-0000000000000000"
    turn_secret = "turn-secret-for-tests-1111111111"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env.update(
        {
            "GEMINI_API_KEY": gemini_key,
            "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
            "SSL_CERT_FILE": emulator.ca_file,
            "PARLEY_JOIN_SECRET": SECRET,
            "PARLEY_TURN_SECRET": turn_secret,
            "PARLEY_TURN_URLS": "turn:127.0.0.1:3478",
            "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1",
        }
    )
    port = 18000 + os.getpid() % 1000
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.cli",
            "--log-level",
            "DEBUG",
            "serve",
            "--port",
            str(port),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    said: list[str] = []
    try:
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                    said.append(await r.text())
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        caller = Caller(url, token=mint_join_token(SECRET))
        await caller.connect()
        caller.say(__import__("numpy").zeros(48000, "int16"))
        await asyncio.sleep(1)
        said.append(str(await caller.call_state()))
        said.append(str(caller.events))
        await caller.hang_up()
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/app.js", "/v1/config", "/v1/calls/nope", "/metrics"):
                async with http.get(url + path) as r:
                    said.append(await r.text())
        for headers in ({}, {"Authorization": "Bearer x.y"}):
            said.append(str(await post_offer(url, headers)))
    finally:
        serve.terminate()
        await asyncio.wait_for(serve.wait(), 15)
    everything = "\n".join(said) + log.read_text()
    assert "listening" in everything  # the log was captured
    for secret in (gemini_key, SECRET, turn_secret):
        assert secret not in everything
