"""Audio chunks and camera frames, written by template, reach the service as the SDK would send them."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from google.genai import _common, types

from parley.agent import realtime_blob
from parley.agent.realtime_blob import BlobSender, _sdk_message
from parley.emulator.server import GeminiEmulator
from tests.test_emulator import (
    MIME,
    MODEL,
    SPEECH,
    _resample,
    client_for,
    correlation,
    emu,  # noqa: F401  (the fast 2.5-rules emulator fixture)
    live_config,
    receive_turn,
    voiced_end,
)
from tests.test_emulator_video import jpeg


@pytest.fixture(autouse=True)
def fresh_templates() -> None:
    realtime_blob._templates.clear()


async def test_spoken_chunks_are_heard_and_echoed_whole(emu: GeminiEmulator) -> None:  # noqa: F811
    spoken = SPEECH[: voiced_end(SPEECH, 16000)]
    pcm = spoken.astype("<i2").tobytes()
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        sender = await BlobSender.for_session(session, "audio", MIME)
        assert sender.fast
        for offset in range(0, len(pcm), 640):
            await sender.send(pcm[offset : offset + 640])
        await session.send_realtime_input(audio_stream_end=True)
        turn = await receive_turn(session)
    assert emu.connections[-1].audio_bytes_received == len(pcm)
    assert "user speech" in turn.input_text()
    assert correlation(spoken, _resample(turn.samples(), 24000, 16000)) > 0.9


async def test_the_template_writes_what_the_sdk_writes(emu: GeminiEmulator) -> None:  # noqa: F811
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        sender = await BlobSender.for_session(session, "audio", MIME)
        sent: list[str] = []

        class Tap:
            async def send(self, message: str) -> None:
                sent.append(message)

        real_socket, session._ws = session._ws, Tap()
        try:
            for size in (0, 2, 3, 640, 641, 1280, 3200):
                chunk = os.urandom(size)
                await sender.send(chunk)
                assert sent[-1] == await _sdk_message(session._api_client, "audio", chunk, MIME), size
        finally:
            session._ws = real_socket


async def test_a_camera_frame_by_template_is_seen_as_the_sdk_would_send_it(emu: GeminiEmulator) -> None:  # noqa: F811
    frame = jpeg((20, 40, 230), 768, 432)
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        sender = await BlobSender.for_session(session, "video", "image/jpeg")
        assert sender.fast
        await sender.send(frame)
        await session.send_realtime_input(text="what do you see?")
        turn = await receive_turn(session)
    assert "I see a 768x432 mostly blue image" in turn.output_text()
    assert [(i.width, i.colour, i.size_bytes) for i in emu.connections[-1].images] == [
        (768, "blue", len(frame))
    ]


async def test_an_sdk_that_writes_chunks_differently_gets_every_chunk(
    emu: GeminiEmulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encode = _common.encode_unserializable_types

    def with_a_length(data: Any) -> Any:
        out = encode(data)
        if isinstance(out, dict) and isinstance(out.get("audio"), dict):
            out["audio"]["length"] = len(out["audio"]["data"])  # a field that depends on the chunk
        return out

    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        monkeypatch.setattr(_common, "encode_unserializable_types", with_a_length)
        sender = await BlobSender.for_session(session, "audio", MIME)
        monkeypatch.undo()
        assert not sender.fast
        await sender.send(b"\x01\x00" * 320)
        await asyncio.sleep(0.1)
    assert emu.connections[-1].audio_bytes_received == 640


def test_a_session_without_the_sdk_socket_is_sent_through_the_sdk() -> None:
    class Elsewhere:
        async def send_realtime_input(self, **kw: Any) -> None:
            self.blob = kw["audio"]

    session = Elsewhere()
    sender = asyncio.run(BlobSender.for_session(session, "audio", MIME))
    assert not sender.fast
    asyncio.run(sender.send(b"ab"))
    assert session.blob == types.Blob(data=b"ab", mime_type=MIME)
