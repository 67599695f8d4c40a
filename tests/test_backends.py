"""`parley serve` reaches Gemini only through the SDK's own environment: API key, ephemeral token,
Vertex AI with Application Default Credentials. Each path is checked end to end against the emulator
standing in for Google, and the secret never shows up in what the server says or logs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator

ROOT = Path(__file__).resolve().parent.parent
SHORT = load_wav("tests/data/speech.wav")[: RATE * 9 // 10]
SECRET = "test-only-gemini-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url


@pytest.fixture
async def serve_with_env(emulator: GeminiEmulator) -> AsyncIterator[Any]:
    started: list[Served] = []

    async def launch(extra_env: dict[str, str]) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
        env.update({"PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1", **extra_env})
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.cli",
            "serve",
            "--port",
            str(port),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        served = Served(process, f"http://127.0.0.1:{port}")
        started.append(served)
        deadline = asyncio.get_running_loop().time() + 60  # a busy machine starts Python slowly
        while asyncio.get_running_loop().time() < deadline and process.returncode is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return served
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("parley serve did not start")

    yield launch
    for served in started:
        if served.process.returncode is None:
            served.process.terminate()
            await served.process.communicate()


async def one_turn(url: str) -> None:
    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SHORT)
        await caller.wait_for_event("agent_turn_end", timeout_s=15)
    finally:
        await caller.hang_up()


async def everything_the_server_says(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as http:
        said = {}
        for path in ("/", "/app.js", "/healthz", "/v1/config", "/v1/calls/nope"):
            async with http.get(url + path) as r:
                said[path] = await r.text()
        async with http.post(url + "/v1/calls", data=b"x", headers={"Content-Type": "application/sdp"}) as r:
            said["POST /v1/calls"] = await r.text()
    return said


async def test_api_key_and_base_url_from_the_sdk_environment(
    emulator: GeminiEmulator, serve_with_env: Any
) -> None:
    served = await serve_with_env(
        {
            "GEMINI_API_KEY": SECRET,
            "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
            "SSL_CERT_FILE": emulator.ca_file,
        }
    )
    await one_turn(served.url)
    record = emulator.connections[-1]
    assert record.endpoint == "developer" and record.auth_kind == "api_key" and record.credential == SECRET
    assert record.setup is not None and record.setup["model"] == "models/gemini-3.8-live"
    said = await everything_the_server_says(served.url)
    assert json.loads(said["/v1/config"])["emulator"] is False
    served.process.terminate()
    out, _ = await served.process.communicate()
    log = out.decode()
    assert "backend: gemini" in log
    assert SECRET not in "".join(said.values()) and SECRET not in log


async def test_ephemeral_token_uses_the_constrained_endpoint(
    emulator: GeminiEmulator, serve_with_env: Any
) -> None:
    token = "auth_tokens/ephemeral-test-token"
    served = await serve_with_env(
        {
            "GEMINI_API_KEY": token,
            "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
            "SSL_CERT_FILE": emulator.ca_file,
        }
    )
    await one_turn(served.url)
    record = emulator.connections[-1]
    assert record.endpoint == "constrained" and record.api_version == "v1alpha"
    assert record.auth_kind == "ephemeral_token"


async def test_vertex_ai_with_application_default_credentials(
    emulator: GeminiEmulator, serve_with_env: Any, tmp_path: Path
) -> None:
    # A service account whose token_uri is the emulator: google-auth signs a JWT and trades it there.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "parley-test",
                "private_key_id": "test",
                "private_key": pem,
                "client_email": "parley@parley-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{emulator.base_url}/token",
            }
        )
    )
    served = await serve_with_env(
        {
            "GOOGLE_GENAI_USE_VERTEXAI": "true",
            "GOOGLE_CLOUD_PROJECT": "parley-test",
            "GOOGLE_CLOUD_LOCATION": "us-central1",
            "GOOGLE_VERTEX_BASE_URL": emulator.base_url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(adc),
            "SSL_CERT_FILE": emulator.ca_file,
            "REQUESTS_CA_BUNDLE": emulator.ca_file,
        }
    )
    await one_turn(served.url)
    record = emulator.connections[-1]
    assert record.endpoint == "vertex" and record.auth_kind == "bearer"
    assert (
        record.model == "projects/parley-test/locations/us-central1/publishers/google/models/gemini-3.8-live"
    )
    assert emulator.tokens_issued >= 1
