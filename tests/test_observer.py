"""What a call reports to its observers (metrics, records, traces), and that a broken one harms nothing."""

from __future__ import annotations

from typing import Any

import pytest

from parley.agent.call_state import CallState, CallStateError, advance
from parley.agent.observer import CallObserver, CallView, Measure, Observers
from parley.caller import RATE, Caller, load_wav
from parley.server import Running
from tests.waiting import wait_until

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE


class Recorder(CallObserver):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.events: list[str] = []
        self.measures: set[Measure] = set()
        self.ended: list[tuple[str, str | None, dict[str, Any]]] = []

    def call_started(self, call: CallView) -> None:
        self.started.append(call.id)

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        self.events.append(kind)

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        assert seconds >= 0
        self.measures.add(measure)

    def call_ended(self, call: CallView) -> None:
        self.ended.append((call.id, call.end_reason, call.summary()))


class Broken(CallObserver):
    def call_started(self, call: CallView) -> None:
        raise RuntimeError("broken observer")

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("broken observer")

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        raise RuntimeError("broken observer")

    def call_ended(self, call: CallView) -> None:
        raise RuntimeError("broken observer")


async def test_observers_hear_the_whole_call_and_a_broken_one_changes_nothing(
    server: Running, url: str
) -> None:
    recorder = Recorder()
    options = server.worker.call_options
    options.observer = Observers([Broken(), options.observer, recorder])
    caller = Caller(url)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 15)
    finally:
        await caller.hang_up()
    await wait_until(lambda: recorder.ended, 10, "the call's end to be reported")
    call_id, reason, summary = recorder.ended[0]
    assert recorder.started == [call_id]
    assert reason == "hangup" and summary["state"] == "ended" and summary["turns"] >= 1
    for kind in ("call", "user_speech_start", "agent_turn_start", "transcript", "agent_turn_end"):
        assert kind in recorder.events, (kind, recorder.events)
    assert {Measure.UPLINK, Measure.DOWNLINK, Measure.FIRST_AUDIO} <= recorder.measures
    assert not server.worker.calls


def test_a_call_state_moves_only_forward() -> None:
    assert advance(CallState.NEW, CallState.CONNECTING) is CallState.CONNECTING
    assert advance(CallState.RECONNECTING, CallState.CONNECTING) is CallState.CONNECTING
    with pytest.raises(CallStateError):
        advance(CallState.ENDED, CallState.ACTIVE)
    with pytest.raises(CallStateError):
        advance(CallState.ENDING, CallState.CONNECTING)
