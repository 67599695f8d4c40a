"""The states of a call and the moves between them, in one place."""

from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    NEW = "new"  # made, the offer not yet answered
    CONNECTING = "connecting"  # answered: ICE and DTLS under way
    ACTIVE = "active"  # media flows
    RECONNECTING = "reconnecting"  # the connection failed: waiting for the caller to rejoin
    ENDING = "ending"  # teardown under way
    ENDED = "ended"


ALLOWED: dict[CallState, frozenset[CallState]] = {
    CallState.NEW: frozenset({CallState.CONNECTING, CallState.ENDING}),
    CallState.CONNECTING: frozenset({CallState.ACTIVE, CallState.RECONNECTING, CallState.ENDING}),
    # a rejoin makes a new connection: back to connecting
    CallState.ACTIVE: frozenset({CallState.RECONNECTING, CallState.CONNECTING, CallState.ENDING}),
    CallState.RECONNECTING: frozenset({CallState.CONNECTING, CallState.ENDING}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class CallStateError(RuntimeError):
    pass


def advance(current: CallState, new: CallState) -> CallState:
    """`new` if the move from `current` is allowed; staying put is always allowed."""
    if new is current or new in ALLOWED[current]:
        return new
    raise CallStateError(f"a call cannot go from {current} to {new}")
