"""Hostile media over real peers: garbage Opus, a flood, junk on the data channel. The bad call ends or
recovers; the good call beside it is untouched."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re

import av
from aiortc.codecs.opus import OpusEncoder

from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.audio import best_alignment

SPEECH = load_wav("tests/data/speech.wav")


class GarbageEncoder(OpusEncoder):
    """Packets of random bytes where Opus should be."""

    def encode(self, frame: av.AudioFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        super().encode(frame, force_keyframe)
        return [os.urandom(60)], int(frame.pts or 0)


class FloodEncoder(OpusEncoder):
    """Ten real packets for every 20 ms: ten times more audio than time passes."""

    def encode(self, frame: av.AudioFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = super().encode(frame, force_keyframe)
        return payloads * 10, timestamp


async def good_call_beside(url: str, bad: Caller) -> tuple[Caller, float]:
    good = Caller(url)
    await good.connect()
    good.say(SPEECH)
    await good.wait_for_event("agent_turn_end", timeout_s=20)
    await asyncio.sleep(0.5)
    _, match = best_alignment(SPEECH, good.heard.samples())
    return good, match


async def test_garbage_opus_is_concealed_and_the_call_survives(url: str, server: Running) -> None:
    bad = Caller(url, encoder=GarbageEncoder())
    await bad.connect()
    try:
        good, match = await good_call_beside(url, bad)
        await good.hang_up()
        assert match > 0.7  # the good call heard its answer in full
        bad_id = bad.call_url.rsplit("/", 1)[1] if bad.call_url else ""
        state = await server.worker.describe_call(bad_id)
        assert state["state"] == "active"
        assert state["uplink"]["decode_errors"] > 100
    finally:
        await bad.hang_up()


async def test_a_flood_is_throttled_and_does_not_hurt_other_calls(
    url: str, server: Running, emulator: GeminiEmulator
) -> None:
    bad = Caller(url, encoder=FloodEncoder())
    await bad.connect()
    bad.say(SPEECH)
    try:
        good, match = await good_call_beside(url, bad)
        good_id = good.call_url.rsplit("/", 1)[1] if good.call_url else ""
        good_state = await server.worker.describe_call(good_id)
        await good.hang_up()
        assert match > 0.7
        assert good_state["latency_ms"]["uplink"]["p95"] < 100
        bad_id = bad.call_url.rsplit("/", 1)[1] if bad.call_url else ""
        bad_state = await server.worker.describe_call(bad_id)
        assert bad_state["uplink"]["flood_dropped"] > 1000
        # what reached Gemini from the flooding call is at most a little faster than real time
        assert bad_state["uplink"]["audio_s_sent"] < 1.6 * bad_state["seconds"] + 1.0
    finally:
        await bad.hang_up()


async def test_junk_on_the_data_channel_is_ignored(url: str, server: Running) -> None:
    caller = Caller(url)
    await caller.connect()
    try:
        await caller.wait_for_event("call", timeout_s=5)
        channel = caller.channel
        assert channel is not None
        for junk in ("not json", "[1, 2]", json.dumps({"type": "nope"}), "x" * 60000, b"\x00\xff" * 10):
            channel.send(junk)
        channel.send(json.dumps({"type": "ping", "t": 42}))
        pong = await caller.wait_for_event("pong", timeout_s=5)
        assert pong["t"] == 42
        caller.say(SPEECH[:RATE])
        await caller.wait_for_event("agent_turn_end", timeout_s=15)  # the call works on
    finally:
        await caller.hang_up()


async def test_malformed_packets_at_the_media_port_change_nothing(url: str, server: Running) -> None:
    caller = Caller(url)
    await caller.connect()
    try:
        ports = {
            int(m.group(1))
            for m in re.finditer(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", caller.answer_sdp)
        }
        assert ports
        rng = random.Random(3)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", ports.pop())
        )
        for i in range(2000):
            kind = i % 4
            if kind == 0:  # random bytes
                datagram = rng.randbytes(rng.randint(1, 1400))
            elif kind == 1:  # an RTP header with a garbage payload, not SRTP-protected
                datagram = bytes([0x80, 111]) + rng.randbytes(10) + rng.randbytes(rng.randint(0, 200))
            elif kind == 2:  # something that looks like STUN
                datagram = b"\x00\x01" + rng.randbytes(18) + rng.randbytes(rng.randint(0, 60))
            else:  # a DTLS-looking record
                datagram = bytes([23, 0xFE, 0xFD]) + rng.randbytes(rng.randint(10, 300))
            transport.sendto(datagram)
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        transport.close()
        caller.say(SPEECH[:RATE])
        await caller.wait_for_event("agent_turn_end", timeout_s=15)  # the call works on
        call_id = caller.call_url.rsplit("/", 1)[1] if caller.call_url else ""
        assert (await server.worker.describe_call(call_id))["state"] == "active"
    finally:
        await caller.hang_up()
