"""The join page and the widget in real Firefox ESR (Marionette, a PulseAudio microphone playing speech):
the same checks as the Chromium tests. One Firefox serves the module (tests/browser/conftest.py)."""

from __future__ import annotations

import asyncio
import re

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from tests.browser.conftest import (
    INBOUND_AUDIO,
    SCREENSHOTS,
    assert_server_hears_nothing,
    cut_network,
    start_server,
)
from tests.browser.firefox import Firefox, PulseMic
from tests.browser.test_widget import HostSite, host_site, parley_for  # noqa: F401 - host_site: a fixture
from tests.waiting import wait_until

CLIENT = "parleyDebug.client"
WIDGET_CLIENT = "document.querySelector('parley-call').client"


async def call_from_page(firefox: Firefox, url: str) -> str:
    await firefox.open(url)
    await firefox.wait_for("document.querySelector('#mode') && !document.querySelector('#mode').hidden",
                           10, "the page to load its config")  # fmt: skip
    assert "Offline emulator mode" in await firefox.text("#mode")
    await firefox.click("#call")
    await firefox.wait_for(f"{CLIENT}.state === 'in-call'", 30, "the call to connect")
    return str(await firefox.js(f"return {CLIENT}.callId;"))


async def test_firefox_page_call_hears_the_agent_shows_captions_latency_mutes_and_hangs_up(
    server: Running, url: str, firefox: Firefox
) -> None:
    call_id = await call_from_page(firefox, url)
    assert await firefox.text("#status") == "In call"
    local_address = await firefox.js(
        """return (async () => {
            const stats = await parleyDebug.client.pc.getStats();
            let pair = null;
            stats.forEach((s) => { if (s.type === "candidate-pair" && s.selected) pair = s; });
            return pair && stats.get(pair.localCandidateId).address;
        })();"""
    )
    assert local_address == "127.0.0.1"

    # The PulseAudio microphone speaks; the emulator says it back; the page hears it and times the turn.
    await firefox.wait_for(
        f"{CLIENT}.turns.length >= 1 && {CLIENT}.debug.agentLoudMs > 2000", 40, "the agent's echo"
    )
    await firefox.wait_for(
        f"{CLIENT}.debug.events.some((e) => e.type === 'agent_turn_end')", 20, "the end of the turn"
    )
    assert await firefox.js("return document.querySelectorAll('#captions li.user').length;") > 0
    agent_caption = await firefox.js("return document.querySelector('#captions li.agent')?.textContent;")
    assert agent_caption and agent_caption.startswith("Agent: ")
    v2v = (await firefox.js(f"return {CLIENT}.turns;"))[0]
    assert 200 < v2v < 4000, v2v
    await firefox.wait_for("/^\\d+ ms$/.test(document.querySelector('#v2v').textContent)", 5, "v2v shown")
    number = re.compile(r"^\d+(\.\d)? ms$")
    await firefox.wait_for("/ ms$/.test(document.querySelector('#rtt').textContent)", 5, "the round trip")
    rtt = await firefox.text("#rtt")
    assert re.match(r"^(\d+(\.\d)?|< 0\.1) ms$", rtt) and rtt != "0 ms", rtt
    assert number.match(await firefox.text("#jitter-buffer")), await firefox.text("#jitter-buffer")
    # the browser's own share: Firefox 153 has the jitter buffer's target,
    # but neither the microphone track's latency nor media-playout, and the panel says so
    target = await firefox.text("#jitter-target")
    assert re.match(r"^target \d+ ms$", target), target
    assert await firefox.text("#capture") == "n/a"
    assert await firefox.text("#playout") == "n/a"
    assert re.match(r"^\d+$", await firefox.text("#packets-lost"))
    await firefox.screenshot(SCREENSHOTS / "page-firefox.png")

    # Mute while the user speaks: the server stops hearing them at once, though the sentence goes on.
    call = server.worker.calls[call_id]
    await wait_until(lambda: call.vad.speaking, 20, "the next sentence to reach the server")
    await firefox.click("#mute")
    assert await firefox.js("return document.querySelector('#mute').getAttribute('aria-pressed');") == "true"
    await assert_server_hears_nothing(call, 2.0)  # of what would still be the sentence (4.9 s long)
    await firefox.click("#mute")
    assert await firefox.js("return document.querySelector('#mute').getAttribute('aria-pressed');") == "false"

    assert list(server.worker.calls) == [call_id]
    await firefox.click("#hangup")
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")
    assert server.worker.calls_ended == {"hangup": 1}
    await firefox.wait_for("document.querySelector('#status').textContent === 'Call ended. You hung up.'",
                           5, "the page to say the call ended")  # fmt: skip
    assert firefox.page_errors(url) == []


async def test_firefox_page_rejoins_the_same_call_when_the_connection_fails(
    server: Running, url: str, emulator: GeminiEmulator, firefox: Firefox
) -> None:
    call_id = await call_from_page(firefox, url)
    await wait_until(lambda: server.worker.calls[call_id].state == "active", 10, "the call to be active")
    await firefox.js(  # every state the page goes through (a rejoin on loopback can take 0.1 s)
        f"window.states = []; {CLIENT}.addEventListener('state', (e) => window.states.push(e.detail.state));"
    )
    cut_network(server.worker.calls[call_id].pc)
    await firefox.wait_for("window.states.includes('reconnecting')", 25, "the page to notice the failure")
    await firefox.wait_for(f"{CLIENT}.state === 'in-call'", 30, "the page to rejoin")
    assert await firefox.js("return window.states;") == ["reconnecting", "in-call"]
    assert await firefox.text("#status") == "In call (reconnected)"
    assert await firefox.js(f"return {CLIENT}.callId;") == call_id
    assert list(server.worker.calls) == [call_id]
    assert server.worker.calls[call_id].rejoins == 1
    assert len(emulator.connections) == 1, "the Gemini session was not kept"
    # The call goes on over the new connection: the agent is heard again.
    turns = len(await firefox.js(f"return {CLIENT}.turns;"))
    await firefox.wait_for(f"{CLIENT}.turns.length > {turns}", 40, "a turn over the new connection")
    await firefox.click("#hangup")
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")
    assert firefox.page_errors(url) == []


async def test_firefox_widget_on_an_allowed_origin_makes_a_call(
    emulator: GeminiEmulator,
    host_site: HostSite,  # noqa: F811
    firefox: Firefox,
) -> None:
    running = await parley_for(emulator, host_site, [host_site.origin])
    try:
        await firefox.open(host_site.origin)
        await firefox.wait_for(f"{WIDGET_CLIENT}", 10, "the widget to load")
        await firefox.click_in_shadow("parley-call", "button.call")
        await firefox.wait_for(
            "window.hostEvents.some((e) => e.type === 'parley-state' && e.state === 'in-call')",
            30,
            "the widget's call to connect",
        )
        assert len(running.worker.calls) == 1
        await firefox.wait_for(
            "['user', 'agent'].every((role) => window.hostEvents.some("
            "(e) => e.type === 'parley-transcript' && e.role === role))",
            40,
            "captions of both sides",
        )
        await firefox.wait_for(f"{WIDGET_CLIENT}.debug.agentLoudMs > 1000", 15, "the agent heard")
        captions = await firefox.js(
            "return document.querySelector('parley-call').shadowRoot.querySelectorAll('.captions li').length;"
        )
        assert captions > 0
        await firefox.screenshot(SCREENSHOTS / "widget-firefox.png")
        await firefox.click_in_shadow("parley-call", "button.hangup")
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
        assert running.worker.calls_ended == {"hangup": 1}
        assert firefox.page_errors(host_site.origin) == []
        assert firefox.page_errors(host_site.parley) == []
    finally:
        await running.stop()


async def test_firefox_widget_on_another_origin_is_refused_with_a_clear_message(
    emulator: GeminiEmulator,
    host_site: HostSite,  # noqa: F811
    firefox: Firefox,
) -> None:
    running = await parley_for(emulator, host_site, [])  # the default: same origin only
    try:
        await firefox.open(host_site.origin)
        await firefox.wait_for(f"{WIDGET_CLIENT}", 10, "the widget to load")
        await firefox.click_in_shadow("parley-call", "button.call")
        status = "document.querySelector('parley-call').shadowRoot.querySelector('.status').textContent"
        await firefox.wait_for(
            f"{status} === 'This site is not allowed to use this Parley server.'", 15, "the refusal"
        )
        errors = await firefox.js(
            "return window.hostEvents.filter((e) => e.type === 'parley-state' && e.state === 'error');"
        )
        assert errors and errors[-1]["reason"] == "forbidden"
        assert running.worker.calls_started == 0
    finally:
        await running.stop()


async def test_firefox_page_follows_a_headset_plugged_in_mid_call_without_a_new_call(
    server: Running, url: str, firefox: Firefox, pulse_mic: PulseMic
) -> None:
    """A real change of the system's default microphone (PulseAudio), as plugging in a headset makes:
    the page, following the default, sends the new one on the same call (devicechange)."""
    call_id = await call_from_page(firefox, url)
    track_label = f"{CLIENT}.mic.getAudioTracks()[0].label"
    assert await firefox.js(f"return {track_label};") == "Test-microphone"
    turns = len(await firefox.js(f"return {CLIENT}.turns;"))
    with pulse_mic.headset():
        await firefox.wait_for(f"{track_label} === 'Test-headset'", 20, "the page to take up the headset")
        sent = await firefox.js(
            f"return {CLIENT}.pc.getSenders().find((s) => s.track && s.track.kind === 'audio').track.label;"
        )
        assert sent == "Test-headset"
        assert (await firefox.text("#status")).startswith("In call (now using Test-headset")
        # the server hears the headset on the same call: the next sentence is answered
        await firefox.wait_for(f"{CLIENT}.turns.length > {turns}", 40, "a turn through the headset")
    assert await firefox.js(f"return {CLIENT}.callId;") == call_id
    assert list(server.worker.calls) == [call_id]
    assert server.worker.calls[call_id].rejoins == 0
    await firefox.click("#hangup")
    await wait_until(lambda: not server.worker.calls, 10, "the call to end on the server")
    assert firefox.page_errors(url) == []


async def test_firefox_plays_a_dtx_downlink_without_concealing_it(
    emulator: GeminiEmulator, firefox: Firefox
) -> None:
    running = await start_server(emulator, downlink_dtx=True)
    try:
        call_id = await call_from_page(firefox, f"http://127.0.0.1:{running.port}/")
        ends = f"{CLIENT}.debug.events.filter((e) => e.type === 'agent_turn_end').length"
        await firefox.wait_for(f"{ends} >= 1", 60, "the first answer")
        first = await firefox.js(f"return {CLIENT}.debug.agentLoudMs;")
        await firefox.wait_for(f"{ends} >= 2", 60, "the second answer, after a DTX silence")
        await asyncio.sleep(0.5)
        end = await firefox.js(f"return ({INBOUND_AUDIO})();")
        second = await firefox.js(f"return {CLIENT}.debug.agentLoudMs;") - first
        call = running.worker.calls[call_id]
        seconds = call.summary()["seconds"]
        assert call.track.frames_skipped > 100  # DTX was on: most of the silence was never sent
        assert end["packets"] < 0.8 * 50 * seconds, (end, seconds)
        assert end["concealed"] < 0.02 * end["total"], end
        assert first > 500 and second > 0.6 * first, (first, second)  # the answer after DTX is heard whole
        await firefox.click("#hangup")
        await wait_until(lambda: not running.worker.calls, 10, "the call to end on the server")
        assert firefox.page_errors(f"http://127.0.0.1:{running.port}/") == []
    finally:
        await running.stop()
