"""The Gemini session survives what the service does: goAway, drops, refused handles, full contexts.

Each test holds a real call (aiortc caller on loopback, `parley serve`'s worker, the real SDK) against
the emulator told to misbehave, and checks what the caller notices: replies keep coming, nothing the
user said is lost, and the call does not die.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from parley.agent.tools import ToolRegistry
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running, start
from tests.audio import best_alignment
from tests.conftest import make_settings
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")
SHORT = SPEECH[: RATE * 9 // 10]  # "Hello Parley."


def events(caller: Caller, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in caller.events if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]


async def take_turn(caller: Caller, utterance: np.ndarray, timeout_s: float = 15.0) -> dict[str, Any]:
    """Say something and wait until the agent has answered it in full."""
    done = len(events(caller, "agent_turn_end", cut=False))
    caller.say(utterance)
    await wait_until(lambda: len(events(caller, "agent_turn_end", cut=False)) > done, timeout_s, "the answer")
    # turnComplete can come a little before the last of the audio has reached the caller
    loop = asyncio.get_running_loop()
    await wait_until(lambda: loop.time() - (caller.heard.last_loud() or 0) > 0.4, 5, "the answer to be heard")
    return events(caller, "agent_turn_end", cut=False)[-1]


def heard_since(caller: Caller, t: float) -> np.ndarray:
    chunks = [c for c, a in zip(caller.heard.chunks, caller.heard.arrivals, strict=True) if a >= t]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


async def heard_in_full(caller: Caller, reference: np.ndarray, since: float, timeout_s: float = 10) -> float:
    """How well the caller heard `reference` since `since`, waiting (up to `timeout_s`) for it to match:
    on a busy machine the answer's last audio can still be on its way after the turn has ended."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        _, match = best_alignment(reference, heard_since(caller, since))
        if match > 0.7 or asyncio.get_running_loop().time() > deadline:
            return match
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def calling(url: str) -> AsyncIterator[Caller]:
    caller = Caller(url)
    await caller.connect()
    try:
        yield caller
    finally:
        await caller.hang_up()


@pytest.fixture
async def call(server: Running, url: str) -> AsyncIterator[Caller]:
    async with calling(url) as caller:
        yield caller


async def test_twenty_minute_call_through_many_goaways(
    server: Running, url: str, emulator: GeminiEmulator
) -> None:
    # Ten-minute connections, compressed: each connection lives 4 s and says goAway 2 s before its end.
    emulator.options.lifetime_s = 4.0
    emulator.options.goaway_lead_s = 2.0
    assert server.session_config is not None
    server.session_config.goaway_margin_s = 0.5
    async with calling(url) as call:
        await converse_through_goaways(call, emulator)


async def converse_through_goaways(call: Caller, emulator: GeminiEmulator) -> None:
    responses = []
    for _ in range(7):
        start_at = asyncio.get_running_loop().time()
        turn = await take_turn(call, SHORT)
        assert turn["interrupted"] is False
        responses.append(asyncio.get_running_loop().time() - start_at)
        await asyncio.sleep(0.3)
    state = await call.call_state()
    assert state["state"] == "active"
    assert state["gemini"]["goaways"] >= 3
    connections = emulator.connections
    assert len(connections) >= 4
    # every replacement resumed from the handle the previous connection issued last
    for previous, following in itertools.pairwise(connections):
        if previous.handles_issued:
            assert following.resumption_handle == previous.handles_issued[-1]
            assert following.resumed
    # the switch costs no more than a normal pause: every turn answered about as fast as the first
    assert max(responses) < min(responses) + 1.5, responses
    assert not events(call, "session", event="reconnecting")


async def test_drop_mid_speech_loses_nothing_the_user_said(url: str, emulator: GeminiEmulator) -> None:
    emulator.options.drop_after_s = 1.2  # the first connection dies 1.2 s in, mid-sentence
    emulator.options.drop_code = 1011
    async with calling(url) as call:
        await wait_until(lambda: emulator.connections, 5, "the Gemini connection")
        emulator.options.drop_after_s = None  # only the first
        await drop_mid_speech(call, emulator)


async def drop_mid_speech(call: Caller, emulator: GeminiEmulator) -> None:
    reconnect = asyncio.get_running_loop().create_task(
        wait_until(lambda: emulator.connections[0].close_code is not None, 10, "the drop")
    )
    spoken_at = asyncio.get_running_loop().time()
    await take_turn(call, SPEECH, timeout_s=20)
    await reconnect
    assert emulator.connections[0].close_code == 1011
    assert emulator.connections[0].ended_at is not None
    assert len(emulator.connections) >= 2
    assert events(call, "session", event="reconnecting")
    # the whole sentence was answered, the part said before the drop included
    match = await heard_in_full(call, SPEECH, spoken_at)
    assert match > 0.7, match


async def test_abrupt_drop_mid_reply_resumes_and_answers_again(
    emulator: GeminiEmulator, call: Caller
) -> None:
    await take_turn(call, SHORT)
    first = emulator.connections[0]
    assert first.handles_issued
    emulator.options.drop_after_turns = 1
    emulator.options.drop_code = None  # no close frame: the SDK sees 1006
    said_at = asyncio.get_running_loop().time()
    await take_turn(call, SPEECH, timeout_s=25)
    emulator.options.drop_after_turns = None
    assert first.close_code == 1006
    second = emulator.connections[1]
    assert second.resumption_handle == first.handles_issued[-1] and second.resumed
    # per-connection state was reset: the new connection hears the caller and answers
    assert second.audio_bytes_received > 0 and second.turns_answered >= 1
    match = await heard_in_full(call, SPEECH, said_at)
    assert match > 0.7, match
    await take_turn(call, SHORT)  # and the conversation goes on


async def test_non_resumable_update_then_drop_resumes_from_last_good_handle(
    emulator: GeminiEmulator, call: Caller
) -> None:
    await take_turn(call, SHORT)
    good = emulator.connections[0].handles_issued[-1]
    emulator.options.resumable_false = True
    await take_turn(call, SHORT)
    assert emulator.connections[0].handles_issued[-1] == good  # nothing new that could be resumed
    emulator.options.resumable_false = False
    emulator.options.drop_after_turns = 2
    await take_turn(call, SHORT, timeout_s=25)
    emulator.options.drop_after_turns = None
    assert emulator.connections[0].close_code == 1011
    assert emulator.connections[1].resumption_handle == good


async def test_stale_handle_falls_back_to_a_fresh_session(emulator: GeminiEmulator, call: Caller) -> None:
    await take_turn(call, SHORT)
    emulator.options.refuse_resumption = True
    emulator.options.drop_after_turns = 1
    await take_turn(call, SHORT, timeout_s=25)
    emulator.options.drop_after_turns = None
    refused = [c for c in emulator.connections if c.close_code == 1008]
    assert refused, [c.close_code for c in emulator.connections]
    fresh = emulator.connections[-1]
    assert fresh.resumption_handle is None and fresh.close_code is None
    assert events(call, "session", event="fresh_session")
    await take_turn(call, SHORT)  # not a dead call
    assert (await call.call_state())["state"] == "active"


async def test_exhausted_context_starts_fresh_instead_of_retrying_it(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(context_compression=False), emulator=emulator)
    emulator.options.context_token_limit = 70  # about two short turns of audio
    caller = Caller(f"http://127.0.0.1:{running.port}")
    await caller.connect()
    try:
        for _ in range(4):
            await take_turn(caller, SHORT, timeout_s=25)
            await asyncio.sleep(0.3)
        assert any(c.close_code == 1007 for c in emulator.connections)
        assert (await caller.call_state())["state"] == "active"
    finally:
        await caller.hang_up()
        await running.stop()


async def test_gemini_gone_for_good_ends_the_call_with_a_reason(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(max_reconnects=2), emulator=emulator)
    caller = Caller(f"http://127.0.0.1:{running.port}")
    await caller.connect()
    try:
        await wait_until(lambda: emulator.open_connections() == 1, 5, "the Gemini connection")
        await emulator.stop()
        ended = await caller.wait_for_event("ended", timeout_s=20)
        assert "gemini unavailable" in ended["reason"]
        await wait_until(lambda: not running.worker.calls, 5, "the call to be released")
    finally:
        await caller.hang_up()
        await running.stop()


async def test_tool_call_round_trip_and_cancellation(emulator: GeminiEmulator) -> None:
    tools = ToolRegistry()
    started = asyncio.Event()
    stopped = asyncio.Event()

    @tools.register
    def order_status(order_id: str) -> dict[str, str]:
        """The shipping status of an order."""
        return {"status": f"order {order_id} has shipped"}

    @tools.register
    async def slow_lookup(query: str) -> dict[str, str]:
        """A lookup that takes a long time."""
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {"answer": "too late"}

    running = await start(make_settings(), tools=tools, emulator=emulator)
    emulator.options.tool_call = "order_status"
    emulator.options.tool_call_args = {"order_id": "A17"}
    caller = Caller(f"http://127.0.0.1:{running.port}")
    await caller.connect()
    try:
        await take_turn(caller, SHORT)
        setup = emulator.connections[0].setup or {}
        declared = [f["name"] for t in setup.get("tools", []) for f in t.get("functionDeclarations", [])]
        assert sorted(declared) == ["order_status", "slow_lookup"]
        call = emulator.connections[0].tool_calls[0]
        response = emulator.connections[0].tool_responses[0]
        assert response["id"] == call["id"] and response["name"] == "order_status"
        # on 3.x the call is NON_BLOCKING: the answer is spoken in a turn of its own, once the model is idle
        spoken = lambda: "".join(e["text"] for e in events(caller, "transcript", role="agent"))  # noqa: E731
        await wait_until(lambda: "A17 has shipped" in spoken(), 15, "the tool's answer spoken")
        # now a slow tool, and the user talks over it: Gemini cancels it, and so do we
        emulator.options.tool_call = "slow_lookup"
        emulator.options.tool_call_args = {"query": "weather"}
        caller.say(SHORT)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.2)
        caller.say(SHORT)
        await wait_until(lambda: events(caller, "session", event="tool_cancelled"), 10, "the cancellation")
        cancelled = events(caller, "session", event="tool_cancelled")[0]
        slow_calls = [c["id"] for c in emulator.connections[0].tool_calls if c["name"] == "slow_lookup"]
        assert cancelled["id"] == slow_calls[0]
        await wait_until(stopped.is_set, 5, "the tool to be cancelled")
    finally:
        await caller.hang_up()
        await running.stop()


async def test_transcripts_and_turn_timings_reach_the_caller(call: Caller) -> None:
    await take_turn(call, SHORT)
    kinds = [e["type"] for e in call.events]
    for kind in ("user_speech_start", "user_speech_end", "agent_turn_start", "agent_turn_end", "transcript"):
        assert kind in kinds
    turn = events(call, "agent_turn_start")[0]
    assert turn["response_ms"] is not None and 0 < turn["response_ms"] < 3000
    assert events(call, "transcript", role="user") and events(call, "transcript", role="agent")
    tokens = (await call.call_state())["gemini"]["tokens"]  # usageMetadata, summed over the call
    assert tokens["total"] > 0 and tokens["prompt"] > 0


async def test_paused_uplink_sends_stream_end_and_keeps_the_first_syllable(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(send_silence=False), emulator=emulator)
    caller = Caller(f"http://127.0.0.1:{running.port}")
    await caller.connect()
    try:
        await asyncio.sleep(3)  # silence: nothing worth paying for
        said_at = asyncio.get_running_loop().time()
        await take_turn(caller, SPEECH, timeout_s=20)
        await asyncio.sleep(2)
        state = await caller.call_state()
        # far less audio went up than the call lasted, and the answer still holds every syllable
        assert state["uplink"]["audio_s_per_call_s"] < 0.75
        match = await heard_in_full(caller, SPEECH, said_at)
        assert match > 0.7, match
    finally:
        await caller.hang_up()
        await running.stop()


async def test_a_new_connection_rejoins_the_same_session(
    server: Running, url: str, emulator: GeminiEmulator
) -> None:
    first = Caller(url)
    await first.connect()
    second = Caller(url)
    try:
        await take_turn(first, SHORT)
        assert first.call_url is not None
        call_id = first.call_url.rsplit("/", 1)[1]
        # the first connection is lost without a word (a network switch); the page comes back on a new one
        first.mic.stop()
        await second.connect(resume=call_id)
        assert second.call_url == first.call_url
        said_at = asyncio.get_running_loop().time()
        await take_turn(second, SPEECH, timeout_s=20)
        match = await heard_in_full(second, SPEECH, said_at)
        assert match > 0.7, match
        state = await second.call_state()
        assert state["rejoins"] == 1 and state["state"] == "active"
        assert len(emulator.connections) == 1  # the same Gemini session went on
        assert list(server.worker.calls) == [call_id]
    finally:
        await second.hang_up()
        await first.hang_up()


async def test_resuming_an_unknown_call_is_404(url: str) -> None:
    caller = Caller(url)
    with pytest.raises(RuntimeError, match="404"):
        await caller.connect(resume="no-such-call")
    await caller.hang_up()


async def test_connections_that_die_at_once_end_the_call_instead_of_looping(emulator: GeminiEmulator) -> None:
    emulator.options.drop_after_s = 0.05  # every connection opens, then drops straight away
    running = await start(make_settings(max_reconnects=3), emulator=emulator)
    caller = Caller(f"http://127.0.0.1:{running.port}")
    await caller.connect()
    try:
        ended = await caller.wait_for_event("ended", timeout_s=20)
        assert "gemini unavailable" in ended["reason"]
        assert 3 <= len(emulator.connections) <= 5  # gave up after a few, with back-off between them
    finally:
        await caller.hang_up()
        await running.stop()


async def test_local_vad_cuts_the_agent_before_gemini_says_interrupted(emulator: GeminiEmulator) -> None:
    # Gemini notices speech a network round trip and its own onset later; on loopback that lead has to
    # be made by hand, or the emulator would win every race.
    emulator.options.vad_prefix_padding_ms = 600
    heard_cut: dict[bool, dict[str, Any]] = {}
    for local in (True, False):
        running = await start(make_settings(local_bargein=local), emulator=emulator)
        try:
            async with calling(f"http://127.0.0.1:{running.port}") as caller:
                caller.say(SPEECH)
                await caller.wait_for_event("agent_turn_start", timeout_s=15)
                await asyncio.sleep(0.8)
                caller.say(SPEECH)  # talk over the agent
                heard_cut[local] = await caller.wait_for_event("interrupted", timeout_s=15)
        finally:
            await running.stop()
    assert heard_cut[True]["source"] == "local"
    assert heard_cut[False]["source"] == "gemini"
