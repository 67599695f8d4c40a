"""Whole calls: a real aiortc caller on loopback UDP, `parley serve`'s app, the real SDK, the emulator."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running, start
from tests.audio import best_alignment
from tests.conftest import make_settings
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE


async def test_spoken_turn_is_answered_with_the_same_speech(url: str) -> None:
    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 15)
        await asyncio.sleep(0.3)
    finally:
        await caller.hang_up()
    heard = caller.heard.samples()
    end_of_speech = caller.mic.speech_ends[0]
    first_reply = caller.heard.first_loud_after(end_of_speech)
    assert first_reply is not None, "the agent never answered"
    # the echo is the caller's own speech, start to end, after the caller stopped talking
    lag, match = best_alignment(SPEECH, heard)
    assert match > 0.7, f"what came back does not match what was said (correlation {match:.2f})"
    reply_start = caller.heard.arrivals[lag // 960]
    assert reply_start >= end_of_speech
    # generous bound: the emulator waits for 0.5 s of silence, then answers
    assert first_reply - end_of_speech < 2.0
    kinds = [e["type"] for e in caller.events]
    assert "call" in kinds and "agent_turn_start" in kinds and "agent_turn_end" in kinds
    transcripts = [e for e in caller.events if e["type"] == "transcript"]
    assert {e["role"] for e in transcripts} == {"user", "agent"}


async def test_barge_in_silences_the_agent_quickly(url: str) -> None:
    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_start", timeout_s=SPEECH_S + 10)
        await asyncio.sleep(1.0)  # the agent is mid-sentence
        assert caller.heard.levels[-1] > -40 or max(caller.heard.levels[-25:]) > -40
        caller.say(SPEECH)  # the user talks over it
        interrupted = await caller.wait_for_event("interrupted", timeout_s=5)
        await asyncio.sleep(SPEECH_S - 1.0)  # the user is still talking
    finally:
        await caller.hang_up()
    cut_at = interrupted["received_at"]
    second_start = caller.mic.speech_starts[1]
    assert cut_at - second_start < 1.5, "the interruption took too long to be noticed"
    # Quiet from shortly after the interruption until the user's second sentence ends.
    after_cut = [
        level
        for arrival, level in zip(caller.heard.arrivals, caller.heard.levels, strict=True)
        if cut_at + 0.15 < arrival < caller.mic.speech_starts[1] + SPEECH_S - 0.5
    ]
    assert len(after_cut) > 50
    assert max(after_cut) < -40, "the agent kept talking after it was interrupted"
    assert interrupted["dropped_ms"] > 500  # queued audio was thrown away, not played


async def test_uplink_loss_is_concealed_and_latency_does_not_ratchet(
    url: str, server: Running, emulator: GeminiEmulator
) -> None:
    caller = Caller(url, uplink_loss=0.05)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await asyncio.sleep(SPEECH_S + 0.5)
        call_id = caller.call_url.rsplit("/", 1)[1] if caller.call_url else ""
        summary = await server.worker.describe_call(call_id)
        dropped = caller.packets_dropped
        latencies = list(server.worker.calls[call_id].uplink_latency_s)
    finally:
        await caller.hang_up()
    assert dropped > 5
    uplink = summary["uplink"]
    # every loss filled, but for one in flight when the summary was taken
    assert uplink["concealed"] + uplink["recovered"] >= dropped - 1
    # Gemini got continuous audio: every 20 ms of the call, lost packets included
    received_s = emulator.connections[-1].audio_bytes_received / 32000
    sent_s = caller.mic.frames_sent / 50
    assert abs(received_s - sent_s) < 0.5, (received_s, sent_s)
    # no ratchet: the latency after the losses is what it was before them
    half = len(latencies) // 2
    early = sorted(latencies[:half])[int(half * 0.9)]
    late = sorted(latencies[half:])[int(half * 0.9)]
    assert late < early + 0.02, (early, late)
    assert late < 0.05


async def test_hang_up_ends_the_call_and_releases_it(url: str, server: Running) -> None:
    caller = Caller(url)
    await caller.connect()
    assert len(server.worker.calls) == 1
    status = await caller.hang_up()
    assert status == 204
    await wait_until(lambda: not server.worker.calls, 5, "the call to be released")
    assert server.worker.calls_ended.get("hangup") == 1


async def test_a_caller_that_vanishes_is_noticed_by_the_no_media_timeout(
    emulator: GeminiEmulator,
) -> None:
    running = await start(make_settings(no_media_timeout_s=1.5), emulator=emulator)
    caller = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli",
        "call",
        f"http://127.0.0.1:{running.port}",
        "--seconds",
        "60",
        env={**os.environ, "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(
            lambda: any(c.state == "active" for c in running.worker.calls.values()), 20, "the call"
        )
        caller.kill()  # gone, without a word: no BYE, no DTLS close
        await caller.wait()
        started = time.monotonic()
        await wait_until(lambda: not running.worker.calls, 8, "the silent call to end")
        assert time.monotonic() - started < 6
        assert running.worker.calls_ended == {"no_media": 1}
        await wait_until(lambda: emulator.open_connections() == 0, 3, "the Gemini socket to close")
    finally:
        if caller.returncode is None:
            caller.kill()
        await running.stop()


async def test_the_agents_sender_keeps_no_copies_of_what_it_sent(url: str, server: Running) -> None:
    # aiortc would keep 128 packets per call for NACKs that audio never gets: garbage-collector work
    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SPEECH[:RATE])
        await caller.wait_for_event("agent_turn_start", timeout_s=15)
        await asyncio.sleep(0.5)
        (call,) = server.worker.calls.values()
        sender = next(t.sender for t in call.pc.getTransceivers() if t.kind == "audio")
        stats = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        history = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
    finally:
        await caller.hang_up()
    assert stats[0].packetsSent > 20  # half a second of the agent's reply (its silence goes as DTX)
    assert len(history) == 0
