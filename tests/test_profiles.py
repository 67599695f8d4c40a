"""Agent profiles: two agents in one process, each call made from its own, chosen and filled in by the
caller, refused with a clear error when it may not start (and then nothing starts).

Real everything: `parley serve`'s server in this process with an agents file, aiortc callers on
loopback, the real SDK against the emulator, which records each connection's setup.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration
from parley.agent.tools import CallContext, ToolRegistry
from parley.agent_plans import open_profiles
from parley.caller import RATE, Caller, load_wav
from parley.emulator.protocol import pick, pick_path
from parley.emulator.server import GeminiEmulator
from parley.profiles import ProfileFileError, ProfileStore
from parley.server import Running, start
from parley.signaling.access import mint_join_token
from tests.conftest import make_settings
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")[: RATE * 9 // 10]  # "Hello Parley."
SECRET = "join-secret-for-profile-tests-1a2b3c"

AGENTS = """
    default_agent = "support"

    [agents.support]
    voice = "Puck"
    system_instruction = "You are the shop's support agent. The caller is {customer_name}, order {order_id}."
    greeting = "Hello {customer_name}, this is support."
    variables = { customer_name = 20, order_id = 12 }
    tools = ["lookup_order"]
    allowed_origins = ["https://shop.example"]

    [agents.sales]
    model = "gemini-2.5-flash-native-audio-preview-12-2025"
    voice = "Charon"
    language = "de-DE"
    system_instruction = "You sell things."
    tools = ["quote_price"]
    google_search = true
    start_sensitivity = "low"
    end_sensitivity = "high"
    prefix_padding_ms = 40
    silence_duration_ms = 700
    temperature = 0.4
    context_compression = false
    video = false
    max_call_seconds = 3
"""

looked_up: list[CallContext] = []


def registry() -> ToolRegistry:
    tools = ToolRegistry()

    @tools.register
    def lookup_order(context: CallContext, detail: str = "status") -> dict[str, str]:
        """The caller's order."""
        looked_up.append(context)
        order = context.variables.get("order_id", "")
        return {"order": order, "call": context.call_id, "agent": context.agent}

    @tools.register
    def quote_price(item: str) -> dict[str, float]:
        """A price."""
        return {"price": 9.5}

    return tools


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
async def served(emulator: GeminiEmulator, tmp_path: Path) -> AsyncIterator[Running]:
    settings = make_settings(agents_file=str(write(tmp_path / "agents.toml", AGENTS)), join_secret=None)
    running = await start(settings, registry(), emulator=emulator)
    try:
        yield running
    finally:
        await running.stop()


def base(running: Running) -> str:
    return f"http://127.0.0.1:{running.port}"


def setup_of(emulator: GeminiEmulator, index: int = -1) -> dict[str, Any]:
    setup = emulator.connections[index].setup
    assert setup is not None
    return setup


def instruction(setup: dict[str, Any]) -> str:
    parts = pick(pick(setup, "system_instruction"), "parts") or []
    return "".join(str(pick(part, "text", "")) for part in parts)


def function_names(setup: dict[str, Any]) -> list[str]:
    tools = pick(setup, "tools") or []
    return [str(pick(d, "name")) for t in tools for d in pick(t, "function_declarations") or []]


def voice(setup: dict[str, Any]) -> str:
    config = pick_path(setup, "generation_config", "speech_config", "voice_config", "prebuilt_voice_config")
    return str(pick(config, "voice_name"))


async def calling(url: str, **kwargs: Any) -> Caller:
    caller = Caller(url, **kwargs)
    await caller.connect(timeout_s=20)
    return caller


def connected(emulator: GeminiEmulator, count: int) -> bool:
    return len(emulator.connections) >= count and emulator.connections[count - 1].setup is not None


async def test_two_agents_in_one_process_get_their_own_setup(
    served: Running, emulator: GeminiEmulator
) -> None:
    support = await calling(base(served), variables={"customer_name": "Ada", "order_id": "A-17"})
    try:
        await wait_until(lambda: connected(emulator, 1), 15, "setup")
        setup = setup_of(emulator)
        assert voice(setup) == "Puck"
        assert instruction(setup) == "You are the shop's support agent. The caller is Ada, order A-17."
        assert function_names(setup) == ["lookup_order"]  # the context parameter is not the model's
        assert pick(setup, "model").endswith("gemini-3.8-live")  # the process's model: the profile names none
        state = await support.call_state()
        assert state["agent"] == "support"
    finally:
        await support.hang_up()

    sales = await calling(base(served), agent="sales")
    try:
        await wait_until(lambda: connected(emulator, 2), 15, "setup")
        setup = setup_of(emulator)
        assert voice(setup) == "Charon"
        assert instruction(setup) == "You sell things."
        assert pick(setup, "model") == "models/gemini-2.5-flash-native-audio-preview-12-2025"
        assert pick_path(setup, "generation_config", "speech_config", "language_code") == "de-DE"
        assert pick_path(setup, "generation_config", "temperature") == pytest.approx(0.4)
        detection = pick_path(setup, "realtime_input_config", "automatic_activity_detection")
        assert pick(detection, "start_of_speech_sensitivity") == "START_SENSITIVITY_LOW"
        assert pick(detection, "end_of_speech_sensitivity") == "END_SENSITIVITY_HIGH"
        assert (pick(detection, "prefix_padding_ms"), pick(detection, "silence_duration_ms")) == (40, 700)
        assert pick(setup, "context_window_compression") is None
        tools = pick(setup, "tools")
        assert function_names(setup) == ["quote_price"]
        assert any(pick(t, "google_search") is not None for t in tools)
        assert (await sales.call_state())["agent"] == "sales"
        # max_call_seconds = 3: the agent's own limit ends the call
        await wait_until(lambda: any(e["type"] == "ended" for e in sales.events), 15, "the call to end")
        ended = next(e for e in sales.events if e["type"] == "ended")
        assert ended["reason"] == "max_duration"
    finally:
        await sales.hang_up()


async def test_the_greeting_is_heard_before_the_caller_speaks(served: Running) -> None:
    caller = await calling(base(served), variables={"customer_name": "Ada"})
    try:
        start = await caller.wait_for_event("agent_turn_start", 15)
        assert start["response_ms"] is None  # nobody had spoken: the agent spoke first
        await wait_until(lambda: caller.heard.first_loud_after(0) is not None, 10, "the greeting to be heard")
        await caller.wait_for_event("agent_turn_end", 15)
        assert not caller.mic.speech_starts  # the caller has said nothing
        said = "".join(e["text"] for e in caller.events if e["type"] == "transcript" and e["role"] == "agent")
        assert "Hello Ada, this is support." in said
    finally:
        await caller.hang_up()


async def test_tools_get_the_call_context(served: Running, emulator: GeminiEmulator) -> None:
    emulator.options.tool_call = "lookup_order"
    emulator.options.tool_call_turns = [2]  # the greeting is turn 1
    looked_up.clear()
    caller = await calling(base(served), variables={"customer_name": "Ada", "order_id": "A-17"})
    try:
        await caller.wait_for_event("agent_turn_end", 15)
        caller.say(SPEECH)
        await wait_until(lambda: emulator.connections[0].tool_responses, 20, "the tool's answer")
        response = pick(emulator.connections[0].tool_responses[0], "response")
        call_id = caller.call_url.rsplit("/", 1)[1] if caller.call_url else ""
        assert response == {"order": "A-17", "call": call_id, "agent": "support"}
        assert looked_up[0].variables == {"customer_name": "Ada", "order_id": "A-17"}
    finally:
        await caller.hang_up()


async def test_grounding_reaches_the_caller_as_an_event(served: Running, emulator: GeminiEmulator) -> None:
    caller = await calling(base(served), agent="sales")
    try:
        caller.say(SPEECH)
        grounding = await caller.wait_for_event("grounding", 20)
        assert grounding["queries"] and len(grounding["sources"]) == 2
        assert all(s["uri"].startswith("https://") and s["title"] for s in grounding["sources"])
    finally:
        await caller.hang_up()


async def test_an_agent_without_video_answers_video_inactive(served: Running) -> None:
    from parley.camera import ColourCamera

    caller = await calling(base(served), agent="sales", camera=ColourCamera())
    try:
        video = caller.answer_sdp.split("m=video", 1)[1]
        assert "a=inactive" in video
        assert (await caller.call_state())["video"] is None  # nothing decoded, nothing sent
    finally:
        await caller.hang_up()


async def post(
    url: str, body: dict[str, Any] | None = None, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    pc = RTCPeerConnection(rtc_configuration([]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        payload = {"type": "offer", "sdp": pc.localDescription.sdp, **(body or {})}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/calls{query}",
                data=json.dumps(payload),
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as response:
                answer = await response.json()
                if response.status == 201:
                    async with http.delete(url + response.headers["Location"]):
                        pass
                return response.status, answer
    finally:
        await pc.close()


async def test_calls_that_may_not_start_get_their_error_and_start_nothing(
    served: Running, emulator: GeminiEmulator
) -> None:
    url = base(served)
    refused: list[tuple[dict[str, Any], str, dict[str, str], int, str]] = [
        ({"variables": {"page_url": "x"}}, "", {}, 400, "'page_url'"),
        ({"variables": {"customer_name": "x" * 21}}, "", {}, 400, "'customer_name' is longer than 20"),
        ({"variables": {"order_id": 17}}, "", {}, 400, "'order_id' must be a string"),
        ({"variables": ["customer_name"]}, "", {}, 400, "variables must be an object"),
        ({}, "?agent=nobody", {}, 404, "no agent named 'nobody'"),
        ({"agent": "nobody"}, "", {}, 404, "no agent named 'nobody'"),
        ({}, "", {"Origin": "https://evil.example"}, 403, "not an allowed origin"),
        ({}, "", {"Origin": "//["}, 403, "not an allowed origin"),  # not a URL: was a 500
        ({"agent": "support"}, "", {"Origin": "http://elsewhere.example"}, 403, "not an allowed origin"),
    ]
    for body, query, headers, status, message in refused:
        got, answer = await post(url, body, query, headers)
        assert (got, message in answer.get("error", "")) == (status, True), (body, query, answer)
    # an origin one agent allows may start that agent, and no other
    got, answer = await post(url, {"agent": "sales"}, "", {"Origin": "https://shop.example"})
    assert got == 403 and "may not start the agent 'sales'" in answer["error"]
    assert served.worker.calls_started == 0 and not emulator.connections
    got, answer = await post(url, {"agent": "support"}, "", {"Origin": "https://shop.example"})
    assert got == 201 and answer["agent"] == "support"


async def test_join_tokens_pick_the_agent_and_override_the_page(
    emulator: GeminiEmulator, tmp_path: Path
) -> None:
    settings = make_settings(agents_file=str(write(tmp_path / "agents.toml", AGENTS)), join_secret=SECRET)
    running = await start(settings, registry(), emulator=emulator)
    try:
        url = base(running)
        sales_only = mint_join_token(SECRET, agent="sales")
        got, answer = await post(url, {"agent": "support"}, "", {"Authorization": f"Bearer {sales_only}"})
        assert got == 403 and "for the agent 'sales'" in answer["error"]
        assert running.worker.calls_started == 0 and not emulator.connections

        token = mint_join_token(SECRET, agent="support", variables={"customer_name": "Grace"})
        caller = await calling(url, token=token, variables={"customer_name": "Mallory", "order_id": "B-2"})
        try:
            await wait_until(lambda: emulator.connections and emulator.connections[-1].setup, 15, "setup")
            assert instruction(setup_of(emulator)).endswith("The caller is Grace, order B-2.")
        finally:
            await caller.hang_up()
    finally:
        await running.stop()


async def test_a_reload_changes_new_calls_only(served: Running, emulator: GeminiEmulator) -> None:
    assert served.profiles is not None and served.profiles.path is not None
    emulator.options.drop_after_s = 3.0  # the first connection drops, the call reconnects
    caller = await calling(base(served))
    try:
        await wait_until(lambda: emulator.connections, 10, "the first connection")
        emulator.options.drop_after_s = None
        changed = textwrap.dedent(AGENTS.replace("the shop's support agent", "the new support agent"))
        await asyncio.to_thread(Path(served.profiles.path).write_text, changed)
        assert served.profiles.reload()
        await wait_until(lambda: connected(emulator, 2), 20, "the reconnection")
        assert "the shop's support agent" in instruction(setup_of(emulator, 1))  # the call keeps its profile
    finally:
        await caller.hang_up()
    later = await calling(base(served))
    try:
        await wait_until(lambda: connected(emulator, 3), 15, "setup")
        assert "the new support agent" in instruction(setup_of(emulator))
    finally:
        await later.hang_up()


# --- the file itself --------------------------------------------------------------------------------


def refusal(tmp_path: Path, text: str, tools: ToolRegistry | None = None) -> str:
    path = write(tmp_path / "agents.toml", text)
    with pytest.raises(SystemExit) as raised:
        open_profiles(make_settings(agents_file=str(path)), tools)
    return str(raised.value)


def test_errors_name_the_file_the_agent_and_the_key(tmp_path: Path) -> None:
    where = str(tmp_path / "agents.toml")
    message = refusal(tmp_path, "[agents.support]\nvoise = 'Puck'\n")
    assert where in message and "agent 'support', key 'voise'" in message and "Extra inputs" in message
    message = refusal(tmp_path, "[agents.support]\nsilence_duration_ms = 'long'\n")
    assert "agent 'support', key 'silence_duration_ms'" in message
    message = refusal(tmp_path, "[agents.support]\nvariables = { name = 0 }\n")
    assert "agent 'support', key 'variables.name'" in message
    message = refusal(tmp_path, "[agents.support]\nstart_sensitivity = 'medium'\n")
    assert "key 'start_sensitivity'" in message
    assert "not valid TOML" in refusal(tmp_path, "[agents.support\n")
    assert "key 'default_agent'" in refusal(tmp_path, "default_agent = 'x'\n[agents.support]\n")
    assert "key 'colour'" in refusal(tmp_path, "colour = 1\n[agents.support]\n")
    assert "no tool named 'missing'" in refusal(tmp_path, "[agents.a]\ntools = ['missing']\n", ToolRegistry())
    with pytest.raises(SystemExit, match="cannot be read"):
        open_profiles(make_settings(agents_file=str(tmp_path / "missing.toml")))


def test_without_a_file_the_environment_is_the_default_agent() -> None:
    store = ProfileStore.open(None)
    assert store.catalog.names() == ["default"] and store.catalog.default_agent == "default"
    assert store.catalog.get("default").model is None  # every knob: the settings'
    assert not store.reload()


def test_a_broken_file_on_reload_keeps_the_old_profiles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "agents.toml", "[agents.a]\n")
    store = ProfileStore.open(str(path))
    path.write_text("[agents.a]\n[agents.b]\nvoice = 3\n")
    assert not store.reload()
    assert store.catalog.names() == ["a"]
    assert "agents file refused" in caplog.text and "agent 'b', key 'voice'" in caplog.text
    path.write_text("[agents.a]\n[agents.b]\n")
    assert store.reload() and store.catalog.names() == ["a", "b"]
    with pytest.raises(ProfileFileError):
        ProfileStore.open(str(tmp_path / "missing.toml"))


async def test_a_call_record_names_its_agent_and_model(emulator: GeminiEmulator, tmp_path: Path) -> None:
    from tests.test_records import get, recorded

    agents = write(tmp_path / "agents.toml", AGENTS)
    settings = make_settings(agents_file=str(agents), database_url=f"sqlite:///{tmp_path}/records.db")
    running = await start(settings, registry(), emulator=emulator)
    try:
        url = base(running)
        caller = await calling(url, agent="sales")
        await caller.hang_up()
        assert caller.call_url is not None
        call_id = caller.call_url.rsplit("/", 1)[1]
        record = await recorded(url, call_id)
        assert record["agent"] == "sales"
        assert record["model"] == "gemini-2.5-flash-native-audio-preview-12-2025"
        status, page = await get(f"{url}/v1/calls?agent=sales")
        assert status == 200 and [c["id"] for c in page["calls"]] == [call_id]
        status, page = await get(f"{url}/v1/calls?agent=support")
        assert status == 200 and page["calls"] == []
    finally:
        await running.stop()


async def test_the_page_config_says_which_agent_and_refuses_an_unknown_one(served: Running) -> None:
    async with aiohttp.ClientSession() as http:
        asked = (("", 200, "support"), ("?agent=sales", 200, "sales"), ("?agent=x", 404, None))
        for query, status, agent in asked:
            async with http.get(f"{base(served)}/v1/config{query}") as response:
                body = await response.json()
                assert response.status == status, body
                assert body.get("agent") == agent
        async with http.get(f"{base(served)}/v1/config?agent=sales") as response:
            sales = await response.json()
        assert sales["model"] == "gemini-2.5-flash-native-audio-preview-12-2025"
        # sales has `video = false`: the page is told, so it offers no camera; support takes video.
        assert sales["video"]["enabled"] is False and sales["video"]["fps"] > 0
        async with http.get(f"{base(served)}/v1/config") as response:
            assert (await response.json())["video"]["enabled"] is True
