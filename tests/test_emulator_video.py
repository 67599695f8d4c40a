"""The emulator's video input, driven by the real SDK: frames are checked, counted, costed and described."""

from __future__ import annotations

import base64
import fractions
import json
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from google.genai import errors, types

from parley.emulator.server import EmulatorOptions, GeminiEmulator
from tests.test_emulator import MODEL, client_for, live_config, receive_turn


def jpeg(colour: tuple[int, int, int], width: int = 640, height: int = 360) -> bytes:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = colour
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 1)
    return b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])


@pytest.fixture
async def emu() -> AsyncIterator[GeminiEmulator]:
    emulator = GeminiEmulator(
        options=EmulatorOptions(reply_speed=40.0, playout_speed=40.0, reply_delay_s=0.02)
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def ask(session: object) -> str:
    await session.send_realtime_input(text="what do you see?")  # type: ignore[attr-defined]
    return (await receive_turn(session)).output_text()


async def test_the_reply_says_what_the_last_frame_showed(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(video=types.Blob(data=jpeg((230, 20, 20)), mime_type="image/jpeg"))
        assert "I see a 640x360 mostly red image" in await ask(session)
        await session.send_realtime_input(
            video=types.Blob(data=jpeg((20, 40, 230), 768, 432), mime_type="image/jpeg")
        )
        assert "I see a 768x432 mostly blue image" in await ask(session)
    record = emu.connections[-1]
    assert [(i.width, i.colour) for i in record.images] == [(640, "red"), (768, "blue")]


@pytest.mark.parametrize(("resolution", "per_frame"), [("MEDIA_RESOLUTION_LOW", 64), (None, 256)])
async def test_frames_cost_tokens_by_media_resolution(
    emu: GeminiEmulator, resolution: str | None, per_frame: int
) -> None:
    config = live_config(**({"media_resolution": resolution} if resolution else {}))
    async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
        for _ in range(3):
            await session.send_realtime_input(
                video=types.Blob(data=jpeg((20, 200, 40)), mime_type="image/jpeg")
            )
        await session.send_realtime_input(text="and now?")
        turn = await receive_turn(session)
    usage = next(m.usage_metadata for m in turn.messages if m.usage_metadata is not None)
    video = [
        d.token_count for d in usage.prompt_tokens_details or [] if d.modality == types.MediaModality.VIDEO
    ]
    assert video == [3 * per_frame]
    assert "mostly green" in turn.output_text()


async def test_deprecated_media_chunks_carry_frames_too(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        data = base64.b64encode(jpeg((230, 220, 20))).decode()
        await session._ws.send(
            json.dumps({"realtimeInput": {"mediaChunks": [{"mimeType": "image/jpeg", "data": data}]}})
        )
        assert "mostly yellow" in await ask(session)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\xff\xd8 not really a jpeg \xff\xd9", "image/jpeg"),
        (b"GIF89a....", "image/jpeg"),
        (b"x", "image/png"),
    ],
    ids=["corrupt", "not-jpeg", "png"],
)
async def test_a_frame_that_is_not_a_jpeg_closes_with_1007(
    emu: GeminiEmulator, data: bytes, mime: str
) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(video=types.Blob(data=data, mime_type=mime))
        with pytest.raises(errors.APIError) as info:
            await receive_turn(session)
    assert info.value.code == 1007
    assert emu.connections[-1].close_code == 1007 and not emu.connections[-1].images
