"""Shared fixtures: a real Gemini Live emulator and a real Parley server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from emulator.server import EmulatorOptions, GeminiEmulator

from agent.ice import offer_host_addresses
from parley.server import Running, start
from parley.settings import Settings

# Tests talk over loopback only: no other address of this machine is ever a target.
offer_host_addresses(["127.0.0.1"])


@pytest.fixture
async def emulator() -> AsyncIterator[GeminiEmulator]:
    emu = GeminiEmulator(options=EmulatorOptions())
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


def make_settings(**overrides: object) -> Settings:
    settings = Settings(host="127.0.0.1", port=0, backend="emulator", ice_host_addresses=["127.0.0.1"])
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
async def server(emulator: GeminiEmulator) -> AsyncIterator[Running]:
    running = await start(make_settings(), emulator=emulator)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def url(server: Running) -> str:
    return f"http://127.0.0.1:{server.port}"
