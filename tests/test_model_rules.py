"""The emulator keeps each Live model family's rules, driven by the real google-genai SDK over TLS.

The 3.x rules (docs/gemini-3x-rules.md) come with a model named gemini-3*, the 2.5 ones with any other
name, and each rule can be forced on or off by its own option. Every test here runs the same client
code against both families and checks what differs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from google.genai import errors, types

from parley.emulator.rules import family_of, rules_for
from parley.emulator.server import EmulatorOptions, GeminiEmulator
from tests.test_emulator import HELLO, client_for, live_config, receive_turn, silence, speak
from tests.test_emulator import emu as pinned_emu  # noqa: F401 (a fixture)

NEW = "gemini-3.8-live"
OLD = "gemini-2.5-flash-native-audio-preview-12-2025"


def quiet(seconds: float) -> np.ndarray:
    """Real but quiet audio (about -80 dBFS): what a live microphone sends in a silent room."""
    rng = np.random.default_rng(1)
    return rng.integers(-4, 5, int(16000 * seconds)).astype(np.int16)


@pytest.fixture
def emu(pinned_emu: GeminiEmulator) -> GeminiEmulator:  # noqa: F811
    """test_emulator.py's fast emulator, with the rules left to the model's name."""
    pinned_emu.options.rules = None
    return pinned_emu


def text_turn(text: str, role: str = "user") -> types.Content:
    return types.Content(role=role, parts=[types.Part(text=text)])


async def no_reply_within(session: Any, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await receive_turn(session, limit_s=seconds)


def test_the_model_name_picks_the_rules_and_the_option_overrides_it() -> None:
    assert family_of("models/gemini-3.8-live") == "3.x"
    assert family_of("models/gemini-3.1-flash-live-preview") == "3.x"
    assert family_of(f"models/{OLD}") == "2.5"
    assert (
        family_of("projects/p/locations/l/publishers/google/models/gemini-live-2.5-flash-native-audio")
        == "2.5"
    )
    assert rules_for("models/gemini-3.8-live", EmulatorOptions()).goaway_lead_s == 60
    assert rules_for(f"models/{OLD}", EmulatorOptions()).goaway_lead_s == 50
    assert rules_for("models/gemini-3.8-live", EmulatorOptions(rules="2.5")).family == "2.5"
    forced = rules_for(f"models/{OLD}", EmulatorOptions(refuse_concurrent_resume=True))
    assert forced.family == "2.5" and forced.refuse_concurrent_resume


async def test_each_connection_records_its_rules(emu: GeminiEmulator) -> None:
    for model in (NEW, OLD):
        async with client_for(emu).aio.live.connect(model=model, config=live_config()) as session:
            assert session.setup_complete is not None
    assert [c.rules for c in emu.connections] == ["3.x", "2.5"]
    assert emu.connections[0].session_id  # 3.x names its session in setupComplete


# --------------------------------------------------------------------------- clientContent


async def test_3x_takes_client_content_only_as_initial_history(emu: GeminiEmulator) -> None:
    # Without historyConfig: refused at once.
    with pytest.raises(errors.APIError) as info:
        async with client_for(emu).aio.live.connect(model=NEW, config=live_config()) as session:
            await session.send_client_content(turns=text_turn("hi"))
            await receive_turn(session)
    assert info.value.code == 1007 and "initial history" in str(info.value)

    # With it: the history goes in before any audio, is not answered, and the next turn has it as context.
    config = live_config(history_config=types.HistoryConfig(initial_history_in_client_content=True))
    async with client_for(emu).aio.live.connect(model=NEW, config=config) as session:
        history = [text_turn("my name is Ada"), text_turn("Hello Ada.", role="model")]
        await session.send_client_content(turns=history, turn_complete=True)
        await speak(session, np.concatenate([HELLO, quiet(0.7)]))
        turn = await receive_turn(session)
        usage = turn.last().usage_metadata
        # Text in the middle of a session goes as realtimeInput.text, and is answered.
        await session.send_realtime_input(text="what is my name")
        typed = await receive_turn(session)
        # clientContent after realtime input is refused.
        await session.send_client_content(turns=text_turn("too late"), turn_complete=True)
        with pytest.raises(errors.APIError) as late:
            await receive_turn(session)
    record = emu.connections[-1]
    assert record.initial_history == [("user", "my name is Ada"), ("model", "Hello Ada.")]
    assert turn.audio and record.turns_answered == 2
    assert usage is not None and usage.prompt_tokens_details is not None
    assert any(d.modality == types.MediaModality.TEXT for d in usage.prompt_tokens_details)  # the history
    assert "what is my name" in typed.output_text()
    assert late.value.code == 1007


async def test_3x_refuses_history_that_does_not_end_with_turn_complete(emu: GeminiEmulator) -> None:
    config = live_config(history_config=types.HistoryConfig(initial_history_in_client_content=True))
    with pytest.raises(errors.APIError) as info:
        async with client_for(emu).aio.live.connect(model=NEW, config=config) as session:
            await session.send_client_content(turns=text_turn("my name is Ada"), turn_complete=False)
            await speak(session, HELLO)
            await receive_turn(session)
    assert info.value.code == 1007 and "turn_complete" in str(info.value)


async def test_2_5_answers_client_content_mid_session(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=OLD, config=live_config()) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        await receive_turn(session)
        await session.send_client_content(turns=text_turn("hi there"))
        turn = await receive_turn(session)
    assert "hi there" in turn.output_text()


# --------------------------------------------------------------------------- concurrent resume


async def handle_from(session: Any) -> str:
    await speak(session, np.concatenate([HELLO, quiet(0.7)]))
    await receive_turn(session)
    update = (await anext(session.receive())).session_resumption_update
    assert update is not None and update.new_handle
    return update.new_handle


@pytest.mark.parametrize(("model", "refused"), [(NEW, True), (OLD, False)], ids=["3.x", "2.5"])
async def test_resuming_while_the_old_connection_is_open(
    emu: GeminiEmulator, model: str, refused: bool
) -> None:
    config = live_config(session_resumption=types.SessionResumptionConfig())
    async with client_for(emu).aio.live.connect(model=model, config=config) as old:
        handle = await handle_from(old)
        resume = live_config(session_resumption=types.SessionResumptionConfig(handle=handle))
        async with client_for(emu).aio.live.connect(model=model, config=resume) as new:
            assert new.setup_complete is not None  # accepted first...
            if refused:
                with pytest.raises(errors.APIError) as info:  # ...then failed
                    await receive_turn(new, limit_s=5)
                assert info.value.code == 1011
            else:
                await speak(new, np.concatenate([HELLO, quiet(0.7)]))
                assert (await receive_turn(new)).audio
    assert emu.connections[1].concurrent_resume_refused is refused
    # Once the old connection is closed the same handle resumes on either family.
    async with client_for(emu).aio.live.connect(model=model, config=resume) as again:
        await speak(again, np.concatenate([HELLO, quiet(0.7)]))
        assert (await receive_turn(again)).audio
    assert emu.connections[-1].resumed and not emu.connections[-1].concurrent_resume_refused


# --------------------------------------------------------------------------- trailing audio


async def test_3x_needs_real_trailing_audio_to_end_a_turn(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=NEW, config=live_config()) as session:
        await speak(session, np.concatenate([HELLO, silence(1.0)]))  # digital zeros after the words
        await session.send_realtime_input(audio_stream_end=True)  # and the stream's end
        await no_reply_within(session, 1.5)
        await speak(session, quiet(0.7))  # a live microphone's quiet ends it
        turn = await receive_turn(session)
    assert turn.audio
    assert emu.connections[-1].zero_chunks_received > 0


async def test_2_5_ends_a_turn_on_zeros_and_on_stream_end(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=OLD, config=live_config()) as session:
        await speak(session, np.concatenate([HELLO, silence(0.7)]))
        assert (await receive_turn(session)).audio
        await speak(session, HELLO[: int(0.6 * 16000)])
        await session.send_realtime_input(audio_stream_end=True)
        assert (await receive_turn(session, limit_s=3)).audio


# --------------------------------------------------------------------------- setup fields


REFUSED_FIELDS = {
    "proactive_audio=false": {"proactivity": types.ProactivityConfig(proactive_audio=False)},
    "thinking_config": {"thinking_config": types.ThinkingConfig(thinking_budget=0)},
    "affective_dialog": {"enable_affective_dialog": True},
}


@pytest.mark.parametrize("field", REFUSED_FIELDS)
async def test_3x_refuses_setup_fields_it_does_not_have(emu: GeminiEmulator, field: str) -> None:
    config = live_config(**REFUSED_FIELDS[field])
    with pytest.raises(errors.APIError) as info:
        async with client_for(emu).aio.live.connect(model=NEW, config=config):
            pass
    assert info.value.code == 1007 and field.split("=")[0] in str(info.value)
    async with client_for(emu).aio.live.connect(model=OLD, config=config) as session:  # 2.5 has them
        assert session.setup_complete is not None


# --------------------------------------------------------------------------- usage-only content


async def test_3x_usage_only_server_content_comes_before_the_audio(emu: GeminiEmulator) -> None:
    async with client_for(emu).aio.live.connect(model=NEW, config=live_config()) as session:
        await speak(session, np.concatenate([HELLO, quiet(0.7)]))
        turn = await receive_turn(session)
    usage_only = [
        i
        for i, m in enumerate(turn.messages)
        if m.server_content is not None
        and m.server_content.model_turn is None
        and not m.server_content.turn_complete
        and not m.server_content.input_transcription
        and m.usage_metadata is not None
    ]
    first_audio = next(
        i for i, m in enumerate(turn.messages) if m.server_content and m.server_content.model_turn
    )
    assert usage_only and usage_only[0] < first_audio
    assert turn.audio  # and the audio after it arrived whole


# --------------------------------------------------------------------------- function calls


def tool_config(behavior: types.Behavior | None = None) -> types.LiveConnectConfig:
    declaration = types.FunctionDeclaration(
        name="lookup", description="Look something up.", behavior=behavior
    )
    return live_config(tools=[types.Tool(function_declarations=[declaration])])


async def answer_call(session: Any, turn: Any, scheduling: types.FunctionResponseScheduling | None) -> None:
    calls = [m.tool_call for m in turn.messages if m.tool_call is not None]
    call = calls[0].function_calls[0]
    response = types.FunctionResponse(id=call.id, name=call.name, response={"v": 1}, scheduling=scheduling)
    await session.send_tool_response(function_responses=[response])


async def test_3x_calls_are_non_blocking_and_answers_are_scheduled(emu: GeminiEmulator) -> None:
    emu.options.tool_call = "lookup"
    async with client_for(emu).aio.live.connect(model=NEW, config=tool_config()) as session:
        await speak(session, np.concatenate([HELLO, quiet(0.7)]))
        turn = await receive_turn(session)  # the model spoke on without waiting for the tool
        assert "tool_call" in turn.events() and turn.audio
        emu.options.tool_call = None
        await answer_call(session, turn, types.FunctionResponseScheduling.WHEN_IDLE)
        spoken = await receive_turn(session)  # the answer, spoken once the model was idle
        assert '[tool lookup returned {"v":1}]' in spoken.output_text()

        emu.options.tool_call = "lookup"
        await speak(session, np.concatenate([HELLO, quiet(0.7)]))
        turn = await receive_turn(session)
        emu.options.tool_call = None
        await answer_call(session, turn, types.FunctionResponseScheduling.SILENT)
        await no_reply_within(session, 1.0)  # SILENT: remembered, not spoken
    assert emu.connections[-1].tool_responses[-1]["scheduling"] == "SILENT"


@pytest.mark.parametrize(
    ("model", "behavior"), [(NEW, types.Behavior.BLOCKING), (OLD, None)], ids=["3.x", "2.5"]
)
async def test_blocking_calls_wait_for_the_answer(
    emu: GeminiEmulator, model: str, behavior: types.Behavior | None
) -> None:
    emu.options.tool_call = "lookup"
    async with client_for(emu).aio.live.connect(model=model, config=tool_config(behavior)) as session:
        await speak(session, np.concatenate([HELLO, quiet(0.7)]))
        first: list[Any] = []
        async with asyncio.timeout(10):
            async for message in session.receive():
                first.append(message)
                if message.tool_call is not None:
                    break
        assert not any(m.server_content and m.server_content.model_turn for m in first)  # silent, waiting
        call = first[-1].tool_call.function_calls[0]
        await session.send_tool_response(
            function_responses=[types.FunctionResponse(id=call.id, name=call.name, response={"v": 2})]
        )
        turn = await receive_turn(session)
    assert turn.audio and '[tool lookup returned {"v":2}]' in turn.output_text()


async def test_vertex_refuses_scheduling(emu: GeminiEmulator) -> None:
    # The raw wire, since the SDK leaves the choice to the caller: Vertex AI's FunctionResponse has no field.
    import json

    import websockets

    emu.options.tool_call = "lookup"
    url = (
        emu.base_url.replace("https", "wss")
        + "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
    )
    headers = {"Authorization": "Bearer ya29.test"}
    model = "projects/p/locations/l/publishers/google/models/gemini-3.8-live"
    async with websockets.connect(url, ssl=emu.client_ssl_context(), additional_headers=headers) as ws:
        await ws.send(
            json.dumps({"setup": {"model": model, "tools": [{"functionDeclarations": [{"name": "lookup"}]}]}})
        )
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "toolResponse": {
                        "functionResponses": [
                            {"id": "x", "name": "lookup", "response": {}, "scheduling": "SILENT"}
                        ]
                    }
                }
            )
        )
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007
    assert "scheduling" in info.value.rcvd.reason
