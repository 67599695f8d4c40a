"""Recordings: with PARLEY_RECORD_AUDIO on, a call is one stereo Ogg/Opus file (the caller left, the
agent right, in step), served to operators; with it off, no file is ever made and the page is not told."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from parley.emulator.server import GeminiEmulator
from parley.server import start
from tests.conftest import make_settings
from tests.test_records import get, recorded, talk


def loud_seconds(samples: np.ndarray, rate: int) -> np.ndarray:
    """The start time of each 100 ms window louder than -40 dBFS."""
    window = rate // 10
    count = samples.size // window
    rms = np.sqrt(np.mean(samples[: count * window].reshape(count, window).astype(np.float64) ** 2, axis=1))
    return np.flatnonzero(rms > 32768 * 0.01) / 10


async def test_a_recorded_call_is_one_stereo_ogg_opus_file_with_both_sides_in_step(
    emulator: GeminiEmulator, tmp_path: Path
) -> None:
    folder = tmp_path / "recordings"
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path}/r.db", record_audio=True, recordings_dir=str(folder)
    )
    running = await start(settings, emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        status, config = await get(f"{url}/v1/config")
        assert status == 200 and config["recorded"] is True
        call_id = await talk(url)
        record = await recorded(url, call_id)
        assert record["recording"] == f"/v1/calls/{call_id}/recording"
    finally:
        await running.stop()  # the file is finished at the latest here
    running = await start(settings, emulator=emulator)
    try:
        status, body = await get(f"http://127.0.0.1:{running.port}/v1/calls/{call_id}/recording")
    finally:
        await running.stop()
    assert status == 200 and body[:4] == b"OggS"
    path = tmp_path / "heard.ogg"
    path.write_bytes(body)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.channels == 2
        # the decoder gives planar float: one row per channel
        stereo = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1) * 32768
        rate = stream.rate
    assert stereo.shape[0] == 2
    caller, agent = loud_seconds(stereo[0], rate), loud_seconds(stereo[1], rate)
    assert caller.size and agent.size, (caller, agent)
    # The caller spoke first; the agent's echo of it came after, in the other channel.
    assert caller[0] < agent[0] and agent[0] - caller[0] > 1.0
    assert stereo.shape[1] / rate > record["duration_s"] * 0.7


async def test_without_the_setting_no_call_is_recorded(emulator: GeminiEmulator, tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/r.db", recordings_dir=str(folder))
    running = await start(settings, emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        status, config = await get(f"{url}/v1/config")
        assert config["recorded"] is False
        call_id = await talk(url)
        record = await recorded(url, call_id)
        assert record["recording"] is None
        status, _ = await get(f"{url}/v1/calls/{call_id}/recording")
        assert status == 404
    finally:
        await running.stop()
    assert not folder.exists()
