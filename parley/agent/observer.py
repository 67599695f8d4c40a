"""What a call reports to whoever watches it (metrics, records, traces), through one narrow door.

A `Call` tells its `CallObserver` when it starts and ends, each state it moves to, every event it sends
the caller (transcripts, turns, interruptions, Gemini session events, tool calls) plus some only
observers hear ("tool_result" with arguments and result, "grounding" with sources), and each latency it
measures. Observers read
a call only through `CallView`; none of them reaches into the call, its session or its media path.
Observer methods run on the event loop, inside the media path: they must return at once (queue any
real work).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Measure(StrEnum):
    UPLINK = "uplink"  # RTP packet arrival -> its PCM written to the model's socket
    DOWNLINK = "downlink"  # model audio arrival -> its first sample handed to the encoder
    BARGEIN_STOP = "bargein_stop"  # the barge-in decision -> the first frame after the cut
    RESPONSE = "response"  # end of the user's speech -> the first audio of the answer
    FIRST_AUDIO = "first_audio"  # the offer taken -> the first outgoing audio frame


class CallFacts(Protocol):
    """What a call was made with, as an observer may read it."""

    @property
    def caller(self) -> Mapping[str, str]:
        """What the front door knew of the caller: "origin", "client_address" (only when kept)."""


class CallView(Protocol):
    """What an observer may read of a call."""

    @property
    def options(self) -> CallFacts: ...

    @property
    def id(self) -> str: ...
    @property
    def end_reason(self) -> str | None: ...
    def summary(self) -> dict[str, Any]: ...
    def counters(self) -> dict[str, float]: ...


class CallAudioTap(Protocol):
    """Both sides of a call's audio as it goes (a recording): each method must only queue the audio."""

    def caller(self, pcm: bytes) -> None:
        """20 ms of the caller's decoded audio, 16 kHz mono s16."""

    def agent(self, samples: Any, pts: int) -> None:
        """One 20 ms frame leaving for the caller (the agent's voice or silence), 48 kHz mono int16, at
        `pts` (48 kHz; it jumps over silence the sender skipped)."""

    def close(self) -> None: ...


class CallObserver:
    """Does nothing: an observer overrides what it cares about."""

    def call_started(self, call: CallView) -> None:
        pass

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        pass

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        pass

    def call_state(self, call: CallView, state: str) -> None:
        """The call moved to `state` (parley/agent/call_state.py: connecting, active, reconnecting...)."""

    def call_ended(self, call: CallView) -> None:
        pass


class Observers(CallObserver):
    """Several observers as one. One that raises is logged (once per kind of report, since some come
    every 20 ms) and disturbs neither the call nor the others."""

    def __init__(self, observers: Iterable[CallObserver]) -> None:
        self._observers = list(observers)
        self._failed: set[tuple[int, str]] = set()

    def _failure(self, index: int, what: str) -> None:
        if (index, what) not in self._failed:
            self._failed.add((index, what))
            name = type(self._observers[index]).__name__
            logger.exception("observer %s failed on %s (later failures of it are not logged)", name, what)

    def call_started(self, call: CallView) -> None:
        for i, observer in enumerate(self._observers):
            try:
                observer.call_started(call)
            except Exception:
                self._failure(i, "call start")

    def call_event(self, call: CallView, kind: str, fields: dict[str, Any]) -> None:
        for i, observer in enumerate(self._observers):
            try:
                observer.call_event(call, kind, fields)
            except Exception:
                self._failure(i, kind)

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        for i, observer in enumerate(self._observers):
            try:
                observer.latency(call, measure, seconds)
            except Exception:
                self._failure(i, f"{measure} latency")

    def call_state(self, call: CallView, state: str) -> None:
        for i, observer in enumerate(self._observers):
            try:
                observer.call_state(call, state)
            except Exception:
                self._failure(i, "call state")

    def call_ended(self, call: CallView) -> None:
        for i, observer in enumerate(self._observers):
            try:
                observer.call_ended(call)
            except Exception:
                self._failure(i, "call end")
