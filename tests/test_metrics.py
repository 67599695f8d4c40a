"""GET /metrics after real calls, and the loopback backend (the mic check and the benchmark's echo)."""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from parley.agent.metrics import histogram_quantile, parse_histograms
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.server import Running, start
from tests.audio import best_alignment
from tests.conftest import make_settings
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE


async def scrape(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        return await response.text(), response.headers["Content-Type"]


async def wait_for(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


async def test_metrics_are_prometheus_text_with_the_histograms_filled_after_a_call(
    url: str, server: Running
) -> None:
    text, content_type = await scrape(url)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    before = parse_histograms(text)
    assert before["parley_uplink_latency_seconds"]["count"] == 0
    assert before["parley_active_calls"] == 0

    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_start", timeout_s=SPEECH_S + 10)
        await asyncio.sleep(1.0)  # the agent is mid-sentence: talk over it
        caller.say(SPEECH)
        await caller.wait_for_event("interrupted", timeout_s=5)
        await asyncio.sleep(0.3)
        during = parse_histograms((await scrape(url))[0])
    finally:
        await caller.hang_up()
    await wait_for(lambda: not server.worker.calls, 5)
    text, _ = await scrape(url)
    # valid exposition: the official parser reads every family
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "parley_uplink_latency_seconds",
        "parley_downlink_latency_seconds",
        "parley_bargein_stop_seconds",
        "parley_response_seconds",
        "parley_first_audio_seconds",
        "parley_event_loop_lag_seconds",
    ):
        assert families[name].type == "histogram", name
    after = parse_histograms(text)
    assert during["parley_active_calls"] == 1 and after["parley_active_calls"] == 0
    assert after["parley_calls_started_total"] == 1
    assert after["parley_calls_ended_total{reason=hangup}"] == 1
    uplink = after["parley_uplink_latency_seconds"]
    assert uplink["count"] > 100  # one per 20 ms chunk sent to Gemini
    # generous: a regression (audio held back a chunk or more) breaks it; the real figures are bench/'s
    assert (histogram_quantile(uplink["buckets"], 0.95) or 1) < 0.06
    downlink = after["parley_downlink_latency_seconds"]
    assert downlink["count"] >= 1
    assert (histogram_quantile(downlink["buckets"], 0.5) or 1) < 0.05
    bargein = after["parley_bargein_stop_seconds"]
    assert bargein["count"] == 1 and bargein["sum"] < 0.1  # the cut reached the wire within a frame or two
    response = after["parley_response_seconds"]
    # the emulator answers after 0.5 s of silence; counted when the local VAD saw the speech end first
    assert response["count"] <= 1 and (response["count"] == 0 or 0.2 < response["sum"] < 2.0)
    assert after["parley_first_audio_seconds"]["count"] == 1
    assert after["parley_event_loop_lag_seconds"]["count"] > 10
    assert after["parley_uplink_frames_total{outcome=decoded}"] > 100
    assert after["parley_gemini_connections_total"] >= 1
    assert after["parley_gemini_tokens_total{kind=total}"] > 0
    assert after["parley_downlink_frames_total{kind=audio}"] > 25


async def test_two_servers_in_one_process_keep_their_own_metrics(emulator: GeminiEmulator) -> None:
    first = await start(make_settings(), emulator=emulator)
    second = await start(make_settings(), emulator=emulator)
    try:
        caller = Caller(f"http://127.0.0.1:{first.port}")
        await caller.connect()
        await caller.hang_up()
        await wait_for(lambda: not first.worker.calls, 5)
        one = parse_histograms((await scrape(f"http://127.0.0.1:{first.port}"))[0])
        two = parse_histograms((await scrape(f"http://127.0.0.1:{second.port}"))[0])
    finally:
        await first.stop()
        await second.stop()
    assert one["parley_calls_started_total"] == 1
    assert two["parley_calls_started_total"] == 0


async def test_loopback_backend_echoes_the_callers_audio_at_once() -> None:
    running = await start(make_settings(backend="loopback"))
    url = f"http://127.0.0.1:{running.port}"
    try:
        caller = Caller(url)
        await caller.connect()
        try:
            caller.say(SPEECH)
            loop = asyncio.get_running_loop()

            def echoed_to_the_end() -> bool:
                # the sentence's quiet tail too, or the echo is heard shorter than what was said and
                # cannot be aligned with all of it
                last = caller.heard.last_loud() or 0
                said = caller.mic.speech_ends
                now = loop.time()
                return bool(said) and last > said[0] - 0.5 and now - last > 0.3 and now - said[0] > 0.3

            await wait_until(echoed_to_the_end, SPEECH_S + 20, "the echo, heard to its end")
        finally:
            await caller.hang_up()
        metrics = parse_histograms((await scrape(url))[0])
    finally:
        await running.stop()
    heard = caller.heard.samples()
    lag, match = best_alignment(SPEECH, heard)
    # An echo is played live: lateness on a busy machine becomes short silences inside it, so the
    # match is judged looser than for a model's buffered answer (no echo at all correlates near 0).
    assert match > 0.5, f"the echo does not match what was said (correlation {match:.2f})"
    # the echo starts within a few frames of the speech: no turn-taking, no model in the way
    echo_start = caller.heard.arrivals[lag // 960] + (lag % 960) / RATE
    assert 0 < echo_start - caller.mic.speech_starts[0] < 0.15
    assert np.abs(heard[lag : lag + SPEECH.size]).max() > 5000  # at the level it was said
    downlink = metrics["parley_downlink_latency_seconds"]
    assert downlink["count"] > 200  # every 20 ms chunk of the echo
    # An echo goes straight out: typically a frame late at most. On a busy machine one 200 ms stall of
    # the loop is 5 % of this echo's chunks, so the tail is judged only against a standing queue.
    assert (histogram_quantile(downlink["buckets"], 0.5) or 1) < 0.03
    assert (histogram_quantile(downlink["buckets"], 0.95) or 1) < 0.5


async def test_garbage_collections_are_timed_by_generation_until_the_metrics_stop() -> None:
    from parley.agent.metrics import Metrics

    metrics = Metrics()
    metrics.start()
    try:
        gc.collect()
        gc.collect(0)
        numbers = parse_histograms(metrics.render()[0].decode())
    finally:
        await metrics.stop()
    pauses = numbers["parley_gc_pause_seconds"]
    assert pauses["count"] >= 2 and pauses["sum"] > 0
    full = [
        line
        for line in metrics.render()[0].decode().splitlines()
        if line.startswith("parley_gc_pause_seconds_count")
    ]
    assert any('generation="2"' in line and not line.endswith(" 0.0") for line in full), full
    before = pauses["count"]
    gc.collect()
    assert parse_histograms(metrics.render()[0].decode())["parley_gc_pause_seconds"]["count"] == before
