"""Shared fixtures: a real Gemini Live emulator and a real Parley server on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from parley.agent.ice import offer_host_addresses
from parley.emulator.server import EmulatorOptions, GeminiEmulator
from parley.server import Running, start
from parley.settings import Settings

# Tests talk over loopback only: no other address of this machine is ever a target.
offer_host_addresses(["127.0.0.1"])
# Servers keep no call records unless a test asks (tests/test_records.py): none in the working directory.
os.environ.setdefault("PARLEY_DATABASE_URL", "none")


@pytest.fixture
async def emulator() -> AsyncIterator[GeminiEmulator]:
    emu = GeminiEmulator(options=EmulatorOptions())
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


def make_settings(**overrides: object) -> Settings:
    settings = Settings(
        host="127.0.0.1", port=0, backend="emulator", ice_host_addresses=["127.0.0.1"], rate_limit="0"
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
def server_settings() -> dict[str, object]:
    """Settings the `server` fixture starts with; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
async def server(emulator: GeminiEmulator, server_settings: dict[str, object]) -> AsyncIterator[Running]:
    running = await start(make_settings(**server_settings), emulator=emulator)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def url(server: Running) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[asyncio.AbstractEventLoop, str, Running]]:
    """A server on its own event loop, shared by a module of hypothesis tests (which are synchronous)."""
    loop = asyncio.new_event_loop()
    emu = GeminiEmulator()
    loop.run_until_complete(emu.start())
    running = loop.run_until_complete(start(make_settings(), emulator=emu))
    try:
        yield loop, f"http://127.0.0.1:{running.port}", running
    finally:
        loop.run_until_complete(running.stop())
        loop.run_until_complete(emu.stop())
        loop.close()
