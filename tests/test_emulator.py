"""The Gemini Live emulator, driven by the real google-genai SDK over real TLS sockets.

The emulator runs in-process; every test talks to it through `client.aio.live.connect` (or a raw
websockets client where the SDK cannot produce the frame under test) and checks what comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import ssl
import time
import warnings
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import websockets
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from parley.emulator import cli
from parley.emulator.protocol import decode_b64
from parley.emulator.server import EmulatorOptions, GeminiEmulator

DATA = Path(__file__).resolve().parent / "data"
MODEL = "gemini-3.8-live"
MIME = "audio/pcm;rate=16000"
DEV_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """PyAV (libswresample), deliberately not the emulator's own resampler."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = src
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)


def _load_speech() -> np.ndarray:
    with wave.open(str(DATA / "speech.wav")) as w:
        assert w.getframerate() == 48000 and w.getnchannels() == 1
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return _resample(samples, 48000, 16000)


SPEECH = _load_speech()  # 16 kHz, ~4.9 s: "Hello Parley. This is a test ... Can you hear me clearly?"
HELLO = SPEECH[: int(0.9 * 16000)]  # "Hello Parley." and the start of the pause after it


def _loud_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    """Indices of the 20 ms frames above -45 dBFS."""
    frame = rate // 50
    n = samples.size // frame
    rms = np.sqrt(np.mean(samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1))
    return np.nonzero(rms > 32768 * 10 ** (-45 / 20))[0]


def voiced_seconds(samples: np.ndarray, rate: int) -> float:
    """From the first to the last loud 20 ms frame."""
    loud = _loud_frames(samples, rate)
    return float((loud[-1] - loud[0] + 1) * (rate // 50) / rate) if loud.size else 0.0


def voiced_end(samples: np.ndarray, rate: int) -> int:
    """The sample index where the last loud frame ends."""
    return int((_loud_frames(samples, rate)[-1] + 1) * (rate // 50))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Peak of the normalised cross-correlation (1.0: b contains a exactly, at some lag)."""
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    n = x.size + y.size
    c = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)
    return float(np.max(np.abs(c)) / (np.linalg.norm(x) * np.linalg.norm(y)))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), dtype=np.int16)


async def speak(session: Any, samples: np.ndarray, chunk_ms: int = 20, realtime: bool = False) -> None:
    """Send PCM like a microphone would: 20 ms chunks, in real time or as fast as possible."""
    pcm = samples.astype("<i2").tobytes()
    step = 16000 * 2 * chunk_ms // 1000
    for i, off in enumerate(range(0, len(pcm), step)):
        await session.send_realtime_input(audio=types.Blob(data=pcm[off : off + step], mime_type=MIME))
        if realtime:
            await asyncio.sleep(chunk_ms / 1000)
        elif i % 25 == 0:
            await asyncio.sleep(0)


@dataclass
class Turn:
    messages: list[types.LiveServerMessage] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    chunks: list[int] = field(default_factory=list)
    first_audio_at: float | None = None

    def events(self) -> list[str]:
        out: list[str] = []
        for m in self.messages:
            sc = m.server_content
            if sc is not None:
                for name in (
                    "input_transcription",
                    "model_turn",
                    "output_transcription",
                    "generation_complete",
                    "interrupted",
                    "turn_complete",
                ):
                    if getattr(sc, name):
                        out.append(name)
            for name in ("tool_call", "tool_call_cancellation", "session_resumption_update", "go_away"):
                if getattr(m, name) is not None:
                    out.append(name)
        return out

    def samples(self) -> np.ndarray:
        return np.frombuffer(bytes(self.audio), dtype="<i2")

    def output_text(self) -> str:
        return "".join(
            m.server_content.output_transcription.text or ""
            for m in self.messages
            if m.server_content and m.server_content.output_transcription
        )

    def input_text(self) -> str:
        return "".join(
            m.server_content.input_transcription.text or ""
            for m in self.messages
            if m.server_content and m.server_content.input_transcription
        )

    def last(self) -> types.LiveServerMessage:
        return self.messages[-1]


async def receive_turn(session: Any, limit_s: float = 10.0) -> Turn:
    """Everything up to and including turnComplete (what one `session.receive()` yields)."""
    turn = Turn()
    async with asyncio.timeout(limit_s):
        async for message in session.receive():
            turn.messages.append(message)
            sc = message.server_content
            if sc and sc.model_turn:
                for part in sc.model_turn.parts or []:
                    if part.inline_data and part.inline_data.data:
                        assert part.inline_data.mime_type == "audio/pcm;rate=24000"
                        if turn.first_audio_at is None:
                            turn.first_audio_at = time.monotonic()
                        turn.audio += part.inline_data.data
                        turn.chunks.append(len(part.inline_data.data))
    return turn


def client_for(
    emu: GeminiEmulator, api_key: str = "test-key", version: str = "v1beta", **kw: Any
) -> genai.Client:
    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=kw.pop("base_url", emu.base_url),
            api_version=version,
            async_client_args={"ssl": emu.client_ssl_context()},
        ),
    )


def live_config(**overrides: Any) -> types.LiveConnectConfig:
    base: dict[str, Any] = {
        "response_modalities": ["AUDIO"],
        "input_audio_transcription": types.AudioTranscriptionConfig(),
        "output_audio_transcription": types.AudioTranscriptionConfig(),
    }
    base.update(overrides)
    return types.LiveConnectConfig(**base)


@pytest.fixture
async def emu() -> AsyncIterator[GeminiEmulator]:
    # Fast replies and fast assumed playout keep every turn well under a second. These tests pin the 2.5
    # rules (text turns by clientContent, audioStreamEnd ending a turn); tests/test_model_rules.py has the
    # 3.x ones, which the default model gets.
    options = EmulatorOptions(reply_speed=40.0, playout_speed=40.0, reply_delay_s=0.02, rules="2.5")
    emulator = GeminiEmulator(options=options)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


# --------------------------------------------------------------------------- setup and routes


async def test_setup_complete_and_what_the_emulator_saw(emu: GeminiEmulator) -> None:
    # A trailing slash on base_url makes the SDK dial "//ws/...": that must work too.
    client = client_for(emu, base_url=emu.base_url + "/")
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        assert session.setup_complete is not None
    record = emu.connections[-1]
    assert record.path.endswith(
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
    assert record.path.startswith("//")
    assert (record.endpoint, record.api_version, record.auth_kind, record.credential) == (
        "developer",
        "v1beta",
        "api_key",
        "test-key",
    )
    assert record.setup is not None and record.setup["model"] == f"models/{MODEL}"
    assert record.model == f"models/{MODEL}"
    await asyncio.sleep(0.05)
    assert record.closed_by == "client"
    assert emu.open_connections() == 0


async def test_unknown_model_is_refused_with_1008(emu: GeminiEmulator) -> None:
    with pytest.raises(errors.APIError) as info:
        async with client_for(emu).aio.live.connect(model="no-such-model", config=live_config()):
            pass
    assert info.value.code == 1008
    assert "models/no-such-model is not found" in str(info.value)
    assert emu.connections[-1].close_code == 1008


async def test_missing_credentials_are_refused_with_1008(emu: GeminiEmulator) -> None:
    url = emu.base_url.replace("https", "wss") + DEV_PATH
    async with websockets.connect(url, ssl=emu.client_ssl_context()) as ws:
        with pytest.raises(websockets.ConnectionClosedError) as info:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert "unregistered callers" in info.value.rcvd.reason


async def test_ephemeral_token_path(emu: GeminiEmulator) -> None:
    client = client_for(emu, api_key="auth_tokens/abc", version="v1alpha")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.ExperimentalWarning)
        async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
            assert session.setup_complete is not None
    record = emu.connections[-1]
    assert record.path.endswith("v1alpha.GenerativeService.BidiGenerateContentConstrained")
    assert (record.endpoint, record.auth_kind, record.credential) == (
        "constrained",
        "ephemeral_token",
        "auth_tokens/abc",
    )
    # Browsers pass the token as ?access_token=
    url = emu.base_url.replace("https", "wss") + DEV_PATH.replace("v1beta", "v1alpha") + "Constrained"
    async with websockets.connect(url + "?access_token=auth_tokens/xyz", ssl=emu.client_ssl_context()) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
    assert emu.connections[-1].credential == "auth_tokens/xyz"


async def test_vertex_path_with_bearer_token(emu: GeminiEmulator) -> None:
    # A token that is valid for an hour: the SDK uses it as is, without a refresh round trip.
    expiry = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)
    credentials = Credentials(token="vertex-token", expiry=expiry)
    client = genai.Client(
        vertexai=True,
        project="p",
        location="us-central1",
        credentials=credentials,
        http_options=types.HttpOptions(
            base_url=emu.base_url,
            api_version="v1beta1",
            async_client_args={"ssl": emu.client_ssl_context()},
        ),
    )
    config = live_config(explicit_vad_signal=True)  # Vertex only: start/end-of-speech signals
    async with client.aio.live.connect(model="gemini-live-2.5-flash-native-audio", config=config) as session:
        assert session.session_id  # Vertex's setupComplete carries the session id
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        turn = await receive_turn(session)
    record = emu.connections[-1]
    assert record.path == "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
    assert (record.endpoint, record.auth_kind, record.credential) == ("vertex", "bearer", "vertex-token")
    assert record.model == (
        "projects/p/locations/us-central1/publishers/google/models/gemini-live-2.5-flash-native-audio"
    )
    assert turn.audio
    signals = [m.voice_activity_detection_signal for m in turn.messages if m.voice_activity_detection_signal]
    assert [s.vad_signal_type for s in signals] == [
        types.VadSignalType.VAD_SIGNAL_TYPE_SOS,
        types.VadSignalType.VAD_SIGNAL_TYPE_EOS,
    ]
    usage = turn.last().usage_metadata
    # Vertex names it candidatesTokenCount on the wire; the SDK must still see a response count.
    assert usage is not None and usage.response_token_count and usage.response_token_count > 0


async def test_environment_variables_point_the_sdk_at_the_emulator(
    emu: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    monkeypatch.setenv("SSL_CERT_FILE", emu.ca_file)
    client = genai.Client(api_key="env-key", http_options=types.HttpOptions(api_version="v1beta"))
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        assert session.setup_complete is not None
    assert emu.connections[-1].credential == "env-key"


# --------------------------------------------------------------------------- turns


async def test_spoken_turn_is_answered_with_the_same_speech(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await speak(session, SPEECH[: voiced_end(SPEECH, 16000)])
        # The trailing silence goes in real time so the end-of-speech latency is measurable.
        silence_started = time.monotonic()
        sender = asyncio.create_task(speak(session, silence(1.2), realtime=True))
        turn = await receive_turn(session)
        await sender

    events = turn.events()
    assert events[0] == "input_transcription"
    assert events[-3:] == ["output_transcription", "generation_complete", "turn_complete"]
    assert set(events[1:-3]) == {"model_turn"}
    assert "user speech" in turn.input_text() and "echo" in turn.output_text()
    # ~200 ms per message (24 kHz, 2 bytes a sample), the last one shorter
    assert all(size == 9600 for size in turn.chunks[:-1]) and 0 < turn.chunks[-1] <= 9600
    # The reply starts after 500 ms of silence (the default), plus the small reply delay.
    assert turn.first_audio_at is not None
    latency = turn.first_audio_at - silence_started
    assert 0.48 < latency < 0.8, latency

    echo = turn.samples()
    spoken_s = voiced_seconds(SPEECH, 16000)
    assert abs(echo.size / 24000 - spoken_s) < 0.35, (echo.size / 24000, spoken_s)
    assert abs(voiced_seconds(echo, 24000) - spoken_s) < 0.1
    assert correlation(SPEECH, _resample(echo, 24000, 16000)) > 0.9

    usage = turn.last().usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.response_token_count
    assert abs(usage.prompt_token_count - 25 * echo.size / 24000) <= 3  # ~25 tokens per second of audio
    assert abs(usage.response_token_count - 25 * echo.size / 24000) <= 3
    assert usage.total_token_count == usage.prompt_token_count + usage.response_token_count

    record = emu.connections[-1]
    sent = voiced_end(SPEECH, 16000) + silence(1.2).size
    assert record.audio_bytes_received == sent * 2
    sent_s = sent / 16000
    assert abs(emu.audio_seconds_received - sent_s) < 0.01
    assert record.turns_answered == 1


async def test_barge_in_interrupts_the_reply(emu: GeminiEmulator) -> None:
    emu.options.reply_speed = 1.0  # the reply streams in real time, so there is something to cut
    emu.options.playout_speed = 1.0
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await speak(session, np.concatenate([SPEECH, silence(0.7)]))
        first = Turn()
        audio_started = asyncio.Event()

        async def talk_over() -> None:
            await audio_started.wait()
            await asyncio.sleep(0.3)  # the user lets the agent say a few words, then talks
            await speak(session, np.concatenate([HELLO, silence(0.7)]))

        talker = asyncio.create_task(talk_over())
        async with asyncio.timeout(10):
            async for message in session.receive():
                first.messages.append(message)
                sc = message.server_content
                if sc and sc.model_turn:
                    audio_started.set()
                    for part in sc.model_turn.parts or []:
                        if part.inline_data and part.inline_data.data:
                            first.audio += part.inline_data.data
        await talker
        # The talked-over speech is the next user turn, answered in full.
        second = await receive_turn(session)

    events = first.events()
    assert "interrupted" in events
    cut = events.index("interrupted")
    assert events[cut + 1 :] == ["turn_complete"]
    assert "generation_complete" not in events  # cut while still generating
    assert "model_turn" not in events[cut:]
    assert first.samples().size / 24000 < voiced_seconds(SPEECH, 16000) - 1.0  # the rest was never sent
    assert second.events()[-1] == "turn_complete" and "interrupted" not in second.events()
    assert abs(second.samples().size / 24000 - voiced_seconds(HELLO, 16000)) < 0.35
    record = emu.connections[-1]
    assert (record.interruptions, record.turns_answered) == (1, 1)


async def test_barge_in_after_all_audio_was_sent_still_interrupts(emu: GeminiEmulator) -> None:
    # Everything is sent at once, but the client is assumed to play it in real time: the user can
    # still talk over it, and turnComplete only comes when playback would have ended.
    emu.options.reply_speed = 100.0
    emu.options.playout_speed = 1.0
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await speak(session, np.concatenate([SPEECH, silence(0.7)]))
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for message in session.receive():
                sc = message.server_content
                if sc and sc.generation_complete:
                    seen.append("generation_complete")
                    await speak(session, HELLO)  # no silence: the user is still talking
                elif sc and sc.interrupted:
                    seen.append("interrupted")
                elif sc and sc.turn_complete:
                    seen.append("turn_complete")
    assert seen == ["generation_complete", "interrupted", "turn_complete"]


async def test_no_interruption_lets_the_reply_finish(emu: GeminiEmulator) -> None:
    emu.options.playout_speed = 2.0
    config = live_config(
        realtime_input_config=types.RealtimeInputConfig(
            activity_handling=types.ActivityHandling.NO_INTERRUPTION
        )
    )
    async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        first = Turn()
        async with asyncio.timeout(10):
            async for message in session.receive():
                first.messages.append(message)
                if message.server_content and message.server_content.model_turn and len(first.messages) == 2:
                    await speak(session, np.concatenate([HELLO, silence(0.7)]))
        second = await receive_turn(session)
    assert "interrupted" not in first.events() and "generation_complete" in first.events()
    assert "interrupted" not in second.events() and second.audio
    assert emu.connections[-1].turns_answered == 2


async def test_manual_activity_signals_delimit_turns(emu: GeminiEmulator) -> None:
    config = live_config(
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
        )
    )
    async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
        # Speech followed by silence is not a turn without activity signals...
        await speak(session, np.concatenate([SPEECH, silence(0.7)]))
        # ...but this is, exactly what lies between activityStart and activityEnd.
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await speak(session, HELLO)
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        turn = await receive_turn(session)
    assert turn.samples().size == HELLO.size * 3 // 2
    assert correlation(HELLO, _resample(turn.samples(), 24000, 16000)) > 0.9
    assert emu.connections[-1].turns_answered == 1


async def test_activity_signals_with_automatic_detection_are_refused(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        with pytest.raises(errors.APIError) as info:
            await receive_turn(session)
    assert info.value.code == 1007


async def test_audio_stream_end_ends_the_turn_at_once(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await speak(session, HELLO[: int(0.6 * 16000)])  # cut mid-word: the VAD alone would wait
        ended = time.monotonic()
        await session.send_realtime_input(audio_stream_end=True)
        turn = await receive_turn(session, limit_s=3)
    assert turn.first_audio_at is not None and turn.first_audio_at - ended < 0.4
    assert turn.audio


async def test_text_turn_is_answered(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="hi there")])
        )
        turn = await receive_turn(session)
    assert turn.audio and "hi there" in turn.output_text()


# --------------------------------------------------------------------------- resumption


async def test_resumption_handles_restore_the_session(emu: GeminiEmulator) -> None:
    config = live_config(session_resumption=types.SessionResumptionConfig())
    async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        first = await receive_turn(session)
        update = (await anext(session.receive())).session_resumption_update
    # While generating the session is not resumable...
    during = [m.session_resumption_update for m in first.messages if m.session_resumption_update]
    assert during and all(u.resumable is False and not u.new_handle for u in during)
    # ...after the turn it is, with a handle and the index of the last message it consumed.
    assert update is not None and update.resumable is True and update.new_handle
    assert update.last_consumed_client_message_index == emu.connections[-1].client_messages - 1
    usage = first.last().usage_metadata
    assert usage is not None and usage.total_token_count and usage.prompt_token_count

    resumed = live_config(session_resumption=types.SessionResumptionConfig(handle=update.new_handle))
    async with client_for(emu).aio.live.connect(model=MODEL, config=resumed) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        second = await receive_turn(session)
    record = emu.connections[-1]
    assert record.resumed and record.resumption_handle == update.new_handle
    assert record.session_id == emu.connections[-2].session_id
    # The context carried over: this turn's prompt is the whole conversation so far.
    usage2 = second.last().usage_metadata
    assert usage2 is not None and usage2.prompt_token_count
    assert usage2.prompt_token_count == usage.total_token_count + usage.prompt_token_count


@pytest.mark.parametrize("refuse", [False, True], ids=["unknown-handle", "refused-handle"])
async def test_bad_resumption_handle_is_refused_with_1008(emu: GeminiEmulator, refuse: bool) -> None:
    handle = "no-such-handle"
    if refuse:
        config = live_config(session_resumption=types.SessionResumptionConfig())
        async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="hi")]))
            await receive_turn(session)
            update = (await anext(session.receive())).session_resumption_update
        assert update is not None and update.new_handle
        handle = update.new_handle
        emu.options.refuse_resumption = True
    config = live_config(session_resumption=types.SessionResumptionConfig(handle=handle))
    with pytest.raises(errors.APIError) as info:
        async with client_for(emu).aio.live.connect(model=MODEL, config=config):
            pass
    assert info.value.code == 1008 and "not found" in str(info.value)


async def test_resumable_false_fault(emu: GeminiEmulator) -> None:
    emu.options.resumable_false = True
    config = live_config(session_resumption=types.SessionResumptionConfig())
    async with client_for(emu).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="hi")]))
        await receive_turn(session)
        update = (await anext(session.receive())).session_resumption_update
    assert update is not None and update.resumable is False and not update.new_handle
    assert emu.connections[-1].handles_issued == []


# --------------------------------------------------------------------------- lifetime and faults


@pytest.mark.parametrize(
    ("options", "time_left", "ends_after"),
    [
        ({"lifetime_s": 0.8, "goaway_lead_s": 0.3}, 0.3, 0.8),
        ({"lifetime_s": 0.8}, 0.4, 0.8),  # the default 50 s lead is clamped to half the lifetime
        ({"goaway_after_s": 0.2, "goaway_time_left_s": 0.4}, 0.4, 0.6),
    ],
    ids=["lifetime", "lifetime-clamped-lead", "goaway-fault"],
)
async def test_goaway_then_close(
    emu: GeminiEmulator, options: dict[str, float], time_left: float, ends_after: float
) -> None:
    emu.options.update(options)
    started = time.monotonic()
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        turn = Turn()
        with pytest.raises(errors.APIError) as info:
            async with asyncio.timeout(5):
                async for message in session.receive():
                    turn.messages.append(message)
    ended = time.monotonic() - started
    go_away = [m.go_away for m in turn.messages if m.go_away]
    assert len(go_away) == 1 and go_away[0].time_left
    assert abs(float(go_away[0].time_left.rstrip("s")) - time_left) < 0.1
    assert info.value.code == 1000 and "operation was cancelled" in str(info.value)
    assert ends_after - 0.05 < ended < ends_after + 0.5
    assert emu.connections[-1].close_code == 1000


@pytest.mark.parametrize(
    ("drop_code", "seen_code"), [(1011, 1011), (None, 1006)], ids=["close-frame", "abort"]
)
async def test_drop_mid_turn(emu: GeminiEmulator, drop_code: int | None, seen_code: int) -> None:
    emu.options.drop_after_turns = 1
    emu.options.drop_code = drop_code
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="one")]))
        first = await receive_turn(session)
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="two")]))
        second = Turn()
        with pytest.raises(errors.APIError) as info:
            async with asyncio.timeout(5):
                async for message in session.receive():
                    second.messages.append(message)
    assert first.events()[-1] == "turn_complete"
    assert "model_turn" in second.events()  # dropped mid-reply, after audio started
    assert info.value.code == seen_code
    assert emu.connections[-1].close_code == seen_code


async def test_drop_after_seconds(emu: GeminiEmulator) -> None:
    emu.options.drop_after_s = 0.3
    started = time.monotonic()
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        with pytest.raises(errors.APIError) as info:
            await receive_turn(session)
    assert info.value.code == 1011 and 0.25 < time.monotonic() - started < 1.5


async def test_context_limit_closes_with_1007_unless_compressed(emu: GeminiEmulator) -> None:
    emu.options.context_token_limit = 60  # 2.4 s of audio
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await speak(session, np.concatenate([SPEECH, silence(0.7)]))
        with pytest.raises(errors.APIError) as info:
            await receive_turn(session)
    assert info.value.code == 1007 and "context" in str(info.value).lower()

    compressed = live_config(
        context_window_compression=types.ContextWindowCompressionConfig(
            trigger_tokens=60, sliding_window=types.SlidingWindow(target_tokens=30)
        )
    )
    async with client_for(emu).aio.live.connect(model=MODEL, config=compressed) as session:
        for _ in range(2):
            await speak(session, np.concatenate([SPEECH, silence(0.7)]))
            turn = await receive_turn(session)
            assert turn.audio
    assert emu.connections[-1].close_code is None


# --------------------------------------------------------------------------- tools


def tool_config() -> types.LiveConnectConfig:
    declaration = types.FunctionDeclaration(
        name="get_time",
        description="the time",
        parameters=types.Schema(
            type=types.Type.OBJECT, properties={"tz": types.Schema(type=types.Type.STRING)}
        ),
    )
    return live_config(tools=[types.Tool(function_declarations=[declaration])])


async def test_tool_call_round_trip(emu: GeminiEmulator) -> None:
    emu.options.tool_call = "get_time"
    emu.options.tool_call_args = {"tz": "UTC"}
    async with client_for(emu).aio.live.connect(model=MODEL, config=tool_config()) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        turn = Turn()
        async with asyncio.timeout(10):
            async for message in session.receive():
                turn.messages.append(message)
                if message.tool_call:
                    assert not any(m.server_content and m.server_content.model_turn for m in turn.messages)
                    call = (message.tool_call.function_calls or [])[0]
                    assert (call.name, call.args) == ("get_time", {"tz": "UTC"}) and call.id
                    await session.send_tool_response(
                        function_responses=types.FunctionResponse(
                            id=call.id, name=call.name, response={"t": "noon"}
                        )
                    )
    events = turn.events()
    assert events.index("tool_call") < events.index("model_turn")
    assert 'tool get_time returned {"t":"noon"}' in turn.output_text()
    record = emu.connections[-1]
    assert record.tool_responses and record.tool_responses[0]["response"] == {"t": "noon"}
    assert record.tool_calls[0]["id"] == record.tool_responses[0]["id"]


async def test_tool_call_cancelled_by_barge_in(emu: GeminiEmulator) -> None:
    emu.options.tool_call = "*"
    async with client_for(emu).aio.live.connect(model=MODEL, config=tool_config()) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        turn = Turn()
        async with asyncio.timeout(10):
            async for message in session.receive():
                turn.messages.append(message)
                if message.tool_call:
                    await speak(session, HELLO)  # talk instead of answering the tool call
    events = turn.events()
    assert events[-3:] == ["tool_call_cancellation", "interrupted", "turn_complete"]
    tool_call = turn.messages[events.index("tool_call")].tool_call
    assert tool_call is not None and tool_call.function_calls
    call_id = tool_call.function_calls[0].id
    cancellation = turn.messages[events.index("tool_call_cancellation")].tool_call_cancellation
    assert cancellation is not None and cancellation.ids == [call_id]
    assert "model_turn" not in events


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "frame",
    [
        "this is not json",
        json.dumps({"bogusMessage": {}}),
        json.dumps({"realtime_input": {"audio": {"data": "***not base64***", "mime_type": MIME}}}),
        json.dumps({"realtimeInput": {"audio": {"data": "AAAA", "mimeType": "audio/opus"}}}),
    ],
    ids=["bad-json", "unknown-message", "bad-base64", "bad-mime"],
)
async def test_malformed_message_closes_with_1007(emu: GeminiEmulator, frame: str) -> None:
    async with client_for(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session._ws.send(frame)
        with pytest.raises(errors.APIError) as info:
            await receive_turn(session)
    assert info.value.code == 1007
    assert emu.connections[-1].close_code == 1007


async def test_message_before_setup_closes_with_1007(emu: GeminiEmulator) -> None:
    url = emu.base_url.replace("https", "wss") + DEV_PATH + "?key=k"
    async with websockets.connect(url, ssl=emu.client_ssl_context()) as ws:
        await ws.send(json.dumps({"realtimeInput": {"audioStreamEnd": True}}))
        with pytest.raises(websockets.ConnectionClosedError) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007


async def test_raw_camel_case_and_standard_base64_are_understood(emu: GeminiEmulator) -> None:
    """What the docs show (camelCase, standard base64 with padding) works as well as the SDK's form."""
    url = emu.base_url.replace("https", "wss") + DEV_PATH
    pcm = np.concatenate([HELLO, silence(0.7)]).astype("<i2").tobytes()
    ctx: ssl.SSLContext = emu.client_ssl_context()
    async with websockets.connect(url, ssl=ctx, additional_headers={"x-goog-api-key": "k"}) as ws:
        setup = {
            "model": f"models/{MODEL}",
            "generationConfig": {"responseModalities": ["AUDIO"]},
            "realtimeInputConfig": {"automaticActivityDetection": {"silenceDurationMs": 300}},
        }
        await ws.send(json.dumps({"setup": setup}))
        first = await ws.recv()
        assert isinstance(first, bytes), "server messages come in binary frames"
        assert json.loads(first) == {"setupComplete": {}}
        for off in range(0, len(pcm), 640):
            data = base64.b64encode(pcm[off : off + 640]).decode()
            await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [{"mimeType": MIME, "data": data}]}}))
        audio = b""
        async with asyncio.timeout(5):
            while True:
                message = json.loads(await ws.recv())
                content = message.get("serverContent", {})
                for part in content.get("modelTurn", {}).get("parts", []):
                    audio += base64.b64decode(part["inlineData"]["data"])
                if content.get("turnComplete"):
                    break
    assert correlation(HELLO, _resample(np.frombuffer(audio, "<i2"), 24000, 16000)) > 0.9


def test_base64_decoding_accepts_both_alphabets_with_or_without_padding() -> None:
    raw = bytes(range(256))
    for encoded in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        assert decode_b64(encoded, "x") == raw


def test_cli_scenario_file_and_flags(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"drop_after_turns": 2, "drop_code": None, "lifetime_s": 30}))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--scenario", str(scenario), "--lifetime", "90", "--reply-speed", "2"])
    assert (args.host, args.port) == ("127.0.0.1", 9443)
    options = cli.options_from_args(args)
    assert (options.drop_after_turns, options.drop_code) == (2, None)  # from the file
    assert (options.lifetime_s, options.reply_speed) == (90, 2)  # flags win over the file
    assert options.goaway_lead_s is None and options.rules is None  # untouched defaults stay: by the model
    args = parser.parse_args(["--rules", "3.x", "--goaway-lead", "60"])
    assert (cli.options_from_args(args).rules, cli.options_from_args(args).goaway_lead_s) == ("3.x", 60)
    with pytest.raises(SystemExit):
        parser.parse_args(["--rules", "4"])
    scenario.write_text(json.dumps({"no_such_option": 1}))
    with pytest.raises(ValueError, match="no_such_option"):
        cli.options_from_args(parser.parse_args(["--scenario", str(scenario)]))
