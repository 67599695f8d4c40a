"""A call survives each Live model family's rules: real caller, Parley's worker, the real SDK, the emulator.

The same calls run against the 3.x rules (the default model, gemini-3.8-live) and the 2.5 ones, and the
emulator is told to misbehave the way the service has been reported to (docs/gemini-3x-rules.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from parley.agent.gemini import GeminiSession
from parley.agent.gemini_setup import connect_config
from parley.agent.live_config import SessionConfig
from parley.agent.live_rules import ComfortNoise, closed
from parley.agent.session import SessionEnded
from parley.agent.tools import ToolRegistry
from parley.caller import Caller
from parley.emulator.protocol import pick_path
from parley.emulator.server import GeminiEmulator
from parley.server import Running, make_client, session_config, start
from tests.audio import best_alignment
from tests.conftest import make_settings
from tests.test_session import SHORT, SPEECH, calling, events, heard_since, take_turn
from tests.waiting import wait_until

NEW = "gemini-3.8-live"
OLD = "gemini-2.5-flash-native-audio-preview-12-2025"
FAMILIES = pytest.mark.parametrize("model", [NEW, OLD], ids=["3.x", "2.5"])


@contextlib.asynccontextmanager
async def serving(emulator: GeminiEmulator, **settings: object) -> AsyncIterator[Running]:
    running = await start(make_settings(**settings), emulator=emulator)
    try:
        yield running
    finally:
        await running.stop()


class Listener:
    def on_model_audio(self, pcm: bytes, arrived_at: float) -> None: ...
    def on_interrupted(self) -> None: ...
    def on_turn_complete(self, cut: bool = False) -> None: ...
    def on_transcript(self, role: str, text: str, finished: bool) -> None: ...
    def on_session_event(self, kind: str, detail: dict[str, object]) -> None: ...
    def on_audio_sent(self, latency_s: float) -> None: ...
    def on_grounding(self, detail: dict[str, object]) -> None: ...
    def on_observed(self, kind: str, detail: dict[str, object]) -> None: ...


def answered(said: np.ndarray, call: Caller, since: float) -> float:
    """How much of what was said came back in the echo since then (1.0: all of it)."""
    return best_alignment(said, heard_since(call, since))[1]


def url_of(running: Running) -> str:
    return f"http://127.0.0.1:{running.port}"


@FAMILIES
async def test_a_fresh_session_after_a_refused_handle_answers_with_the_context(
    emulator: GeminiEmulator, model: str
) -> None:
    async with serving(emulator, model=model) as served, calling(url_of(served)) as call:
        await take_turn(call, SHORT)
        emulator.options.refuse_resumption = True
        emulator.options.drop_after_turns = 1
        await take_turn(call, SHORT, timeout_s=25)
        emulator.options.drop_after_turns = None
        await wait_until(lambda: events(call, "session", event="fresh_session"), 10, "a fresh session")
        said_at = asyncio.get_running_loop().time()
        await take_turn(call, SPEECH, timeout_s=25)  # the next user turn is answered, in full
        await wait_until(lambda: answered(SPEECH, call, said_at) > 0.7, 20, "the whole sentence answered")
        assert (await call.call_state())["state"] == "active"
    fresh = emulator.connections[-1]
    assert fresh.resumption_handle is None and fresh.close_code is None and fresh.turns_answered >= 1
    assert not [c for c in emulator.connections if c.close_code == 1007]  # the seed was never refused
    setup = fresh.setup or {}
    if model == NEW:
        # 3.x: the transcript went in as initial history, announced in setup, before any audio
        assert pick_path(setup, "history_config", "initial_history_in_client_content") is True
        assert fresh.initial_history and fresh.initial_history[0][0] == "user"
    else:
        assert "historyConfig" not in setup


async def test_a_seed_that_keeps_being_refused_shrinks_to_nothing(emulator: GeminiEmulator) -> None:
    # A 2.5 session (clientContent seeding without historyConfig) against a service that takes history
    # only the 3.x way: every seed is refused with 1007, which is no reason to end the call.
    running = await start(make_settings(model=OLD, max_reconnects=6), emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            await take_turn(call, SHORT)
            await take_turn(call, SHORT)
            emulator.options.history_only_client_content = True
            emulator.options.refuse_resumption = True
            emulator.options.drop_after_turns = 2
            call.say(SHORT)  # dropped mid-reply
            await wait_until(lambda: events(call, "session", event="fresh_session"), 25, "a fresh session")
            emulator.options.drop_after_turns = None
            await wait_until(
                lambda: (
                    emulator.connections[-1].turns_answered or emulator.connections[-1].audio_bytes_received
                ),
                25,
                "a session that takes audio",
            )
            await take_turn(call, SHORT, timeout_s=25)
            assert (await call.call_state())["state"] == "active"
            refusals = [e for e in events(call, "session", event="reconnecting") if e.get("code") == 1007]
            shrunk = events(call, "session", event="seed_shrunk")
    finally:
        await running.stop()
    # every refusal reached the session as a 1007 with its reason, whichever side saw it first
    assert refusals and all("initial history" in e["reason"] for e in refusals)
    assert shrunk and shrunk[-1]["turns"] == 0  # halved down to nothing, then a session with no history
    assert emulator.connections[-1].close_code is None


@FAMILIES
async def test_goaway_switches_keep_the_call_going(emulator: GeminiEmulator, model: str) -> None:
    emulator.options.lifetime_s = 4.0
    emulator.options.goaway_lead_s = 2.0
    running = await start(make_settings(model=model), emulator=emulator)
    assert running.session_config is not None
    running.session_config.goaway_margin_s = 0.5
    try:
        async with calling(url_of(running)) as call:
            for _ in range(4):
                await take_turn(call, SHORT, timeout_s=20)
                await asyncio.sleep(0.3)
            await wait_until(lambda: len(emulator.connections) >= 3, 20, "two switches")
            state = await call.call_state()
            switched = events(call, "session", event="goaway_switched")
    finally:
        await running.stop()
    assert state["state"] == "active" and state["gemini"]["goaways"] >= 2
    assert not any(c.concurrent_resume_refused for c in emulator.connections)
    assert not events(call, "session", event="reconnecting")
    # 3.x closes before it resumes; 2.5 makes the new connection first
    assert {e["make_before_break"] for e in switched} == {model == OLD}
    # each switch's gap is measured (its size is a timing goal: bench/goaway_gap.py), and no audio was lost
    assert len(state["gemini"]["switch_gaps_ms"]) == len(switched) >= 2
    assert state["uplink"]["audio_s_dropped"] == 0


async def test_a_refused_concurrent_resume_falls_back_without_losing_the_caller(
    emulator: GeminiEmulator,
) -> None:
    # A 2.5 session tries make-before-break; the service refuses the concurrent resume with 1011.
    emulator.options.refuse_concurrent_resume = True
    running = await start(make_settings(model=OLD), emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            await take_turn(call, SHORT)  # a handle to resume
            said_at = asyncio.get_running_loop().time()
            call.say(SPEECH)
            await asyncio.sleep(1.0)
            await emulator.go_away(20.0)  # mid-sentence
            # every word said across the switch is answered
            await wait_until(lambda: answered(SPEECH, call, said_at) > 0.7, 45, "the whole sentence answered")
            await take_turn(call, SHORT, timeout_s=20)
            assert (await call.call_state())["state"] == "active"
    finally:
        await running.stop()
    assert emulator.connections[1].concurrent_resume_refused
    assert events(call, "session", event="concurrent_resume_refused")
    following = emulator.connections[2]
    assert following.resumed and not following.concurrent_resume_refused


@FAMILIES
async def test_exact_zeros_never_reach_the_model(emulator: GeminiEmulator, model: str) -> None:
    # The caller's silence between words is digital zeros (what a muted track sends too).
    running = await start(make_settings(model=model), emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            await take_turn(call, SHORT)
            await asyncio.sleep(1.0)
            await take_turn(call, SHORT)
    finally:
        await running.stop()
    record = emulator.connections[0]
    assert record.audio_bytes_received > 32000 and record.zero_chunks_received == 0
    assert record.turns_answered >= 2


@FAMILIES
async def test_paused_uplink_turns_end_on_each_family(emulator: GeminiEmulator, model: str) -> None:
    # PARLEY_SEND_SILENCE=false: after a pause only audioStreamEnd goes, which 3.x does not take as the
    # turn's end; the quiet the call streams before it (never zeros) ends the turn on both families.
    running = await start(make_settings(model=model, send_silence=False), emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            for _ in range(2):
                said_at = asyncio.get_running_loop().time()
                await take_turn(call, SPEECH, timeout_s=20)
                await wait_until(
                    lambda t=said_at: answered(SPEECH, call, t) > 0.7, 20, "the whole sentence answered"
                )
                await asyncio.sleep(3)  # silence: nothing worth paying for
            state = await call.call_state()
    finally:
        await running.stop()
    assert state["uplink"]["audio_s_per_call_s"] < 0.8
    assert emulator.connections[0].zero_chunks_received == 0
    assert emulator.connections[0].turns_answered >= 2


@FAMILIES
async def test_tools_say_how_they_block_and_when_to_speak(emulator: GeminiEmulator, model: str) -> None:
    tools = ToolRegistry()
    release = asyncio.Event()

    @tools.register
    async def order_status(order_id: str) -> dict[str, str]:
        """The shipping status of an order; slow."""
        await release.wait()
        return {"status": f"order {order_id} has shipped"}

    @tools.register(blocking=True)
    def quick_check() -> dict[str, bool]:
        """A check the model waits for."""
        return {"ok": True}

    emulator.options.tool_call = "order_status"
    emulator.options.tool_call_args = {"order_id": "A17"}
    running = await start(make_settings(model=model), tools=tools, emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            call.say(SHORT)
            if model == NEW:
                # NON_BLOCKING: the model speaks on while the tool runs; the conversation does not freeze
                await wait_until(
                    lambda: events(call, "agent_turn_end", cut=False), 15, "a reply before the tool"
                )
            await asyncio.sleep(0.2)
            release.set()
            spoken = lambda: "".join(e["text"] for e in events(call, "transcript", role="agent"))  # noqa: E731
            await wait_until(lambda: "A17 has shipped" in spoken(), 15, "the tool's answer spoken")
    finally:
        await running.stop()
    record = emulator.connections[0]
    declared = {
        f["name"]: f.get("behavior")
        for t in (record.setup or {}).get("tools", [])
        for f in t["functionDeclarations"]
    }
    response = record.tool_responses[0]
    if model == NEW:
        assert declared == {"order_status": "NON_BLOCKING", "quick_check": "BLOCKING"}
        assert response.get("scheduling") == "WHEN_IDLE"
    else:
        assert declared == {"order_status": None, "quick_check": "BLOCKING"}
        assert "scheduling" not in response


async def test_a_tool_running_across_a_goaway_switch_is_answered_on_the_new_connection(
    emulator: GeminiEmulator,
) -> None:
    tools = ToolRegistry()
    release = asyncio.Event()

    @tools.register
    async def order_status(order_id: str) -> dict[str, str]:
        """The shipping status of an order; slow."""
        await release.wait()
        return {"status": f"order {order_id} has shipped"}

    emulator.options.tool_call = "order_status"
    emulator.options.tool_call_args = {"order_id": "B52"}
    emulator.options.tool_call_turns = [1]
    running = await start(make_settings(), tools=tools, emulator=emulator)
    try:
        async with calling(url_of(running)) as call:
            await take_turn(call, SHORT)  # the call is made; the model speaks on (3.x: NON_BLOCKING)
            await emulator.go_away(20.0)
            await wait_until(lambda: len(emulator.connections) == 2, 15, "the switch")
            release.set()
            spoken = lambda: "".join(e["text"] for e in events(call, "transcript", role="agent"))  # noqa: E731
            await wait_until(lambda: "B52 has shipped" in spoken(), 15, "the answer spoken after the switch")
    finally:
        await running.stop()
    first, second = emulator.connections
    assert first.tool_calls and not first.tool_responses
    assert second.resumed and second.tool_responses[0]["id"] == first.tool_calls[0]["id"]


def test_vertex_leaves_scheduling_out() -> None:
    tools = ToolRegistry()

    @tools.register(scheduling="INTERRUPT")
    def ping() -> dict[str, str]:
        return {}

    assert tools.scheduling("ping", "3.x", vertex=False) is not None
    assert tools.scheduling("ping", "3.x", vertex=True) is None
    assert tools.scheduling("ping", "2.5", vertex=False) is None


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("thinking_budget", 0, "PARLEY_THINKING_BUDGET"),
        ("proactive_audio", False, "PARLEY_PROACTIVE_AUDIO"),
        ("affective_dialog", True, "PARLEY_AFFECTIVE_DIALOG"),
    ],
)
async def test_a_setting_the_model_refuses_stops_before_any_call(
    emulator: GeminiEmulator, setting: str, value: object, named: str
) -> None:
    # `parley serve` refuses to start with it, naming the setting
    with pytest.raises(SystemExit, match=named):
        await start(make_settings(**{setting: value}), emulator=emulator)
    # and a session made with it anyway ends at once with that reason, having sent nothing
    settings = make_settings(**{setting: value})
    session = GeminiSession(
        make_client(settings, emulator), session_config(settings, ToolRegistry()), Listener()
    )
    with pytest.raises(SessionEnded, match=named):
        await session.run()
    assert not emulator.connections
    # the same setting goes into a 2.5 model's setup
    config = SessionConfig(model=OLD)
    setattr(config, setting, value)
    field = {"thinking_budget": "thinking_config", "proactive_audio": "proactivity"}.get(setting)
    assert (
        getattr(connect_config(config, None, seeding=False), field or "enable_affective_dialog") is not None
    )


def test_close_reasons_and_comfort_noise() -> None:
    from google.genai import errors
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    sent = closed(ConnectionClosedError(Close(1007, "Context window exhausted"), None))
    try:
        errors.APIError.raise_error(1007, "Context window exhausted", None)
    except errors.APIError as exc:
        received = closed(exc)
    assert sent == received and sent.context_full  # read the same whichever side saw it
    refused = closed(ConnectionClosedError(Close(1007, 'Unknown name "scheduling"'), None))
    assert refused.refused_request and not refused.context_full
    assert closed(ConnectionClosedError(None, None)).code == 1006
    noise = ComfortNoise().unzero(bytes(640))
    assert len(noise) == 640 and all(noise[i : i + 2] != b"\0\0" for i in range(0, 640, 2))
    assert max(abs(int.from_bytes(noise[i : i + 2], "little", signed=True)) for i in range(0, 640, 2)) <= 3
