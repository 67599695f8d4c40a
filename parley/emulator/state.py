"""What outlives a connection (resumable session state) and what tests inspect (records)."""

from __future__ import annotations

import copy
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .vision import SeenImage


@dataclass
class HistoryEntry:
    role: str  # "user" or "model"
    text: str  # transcript, or a placeholder for audio we cannot transcribe
    tokens: int
    modality: str  # "AUDIO" or "TEXT"


@dataclass
class SessionState:
    """The conversation as the model would remember it; restored by a resumption handle."""

    session_id: str
    turns: int = 0  # user turns taken
    history: list[HistoryEntry] = field(default_factory=list)
    # NON_BLOCKING calls not yet answered: a resumed connection still takes their answers
    pending_calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def context_tokens(self) -> int:
        return sum(e.tokens for e in self.history)

    def tokens_by_modality(self, role: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.history:
            if role is None or e.role == role:
                out[e.modality] = out.get(e.modality, 0) + e.tokens
        return out

    def compress(self, target_tokens: int) -> None:
        """Sliding-window compression: forget the oldest turns until under the target."""
        while len(self.history) > 1 and self.context_tokens > target_tokens:
            self.history.pop(0)


def audio_tokens(seconds: float, per_second: float) -> int:
    return max(0, math.ceil(seconds * per_second - 1e-9))


def text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class SessionStore:
    """Resumption handles -> snapshots of session state, valid for a while."""

    def __init__(self) -> None:
        self._snapshots: dict[str, tuple[SessionState, float]] = {}
        self._owners: dict[str, ConnectionRecord] = {}

    def issue(self, state: SessionState, ttl_s: float, owner: ConnectionRecord | None = None) -> str:
        """A handle for `state`; `owner` is the connection it was issued on (a resume may race it)."""
        now = time.monotonic()
        self._snapshots = {h: v for h, v in self._snapshots.items() if v[1] > now}
        self._owners = {h: o for h, o in self._owners.items() if h in self._snapshots}
        handle = secrets.token_urlsafe(24)
        self._snapshots[handle] = (copy.deepcopy(state), now + ttl_s)
        if owner is not None:
            self._owners[handle] = owner
        return handle

    def owner(self, handle: str) -> ConnectionRecord | None:
        return self._owners.get(handle)

    def restore(self, handle: str) -> SessionState | None:
        entry = self._snapshots.get(handle)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return copy.deepcopy(entry[0])


@dataclass
class ConnectionRecord:
    """What the emulator saw on one connection, for tests to inspect."""

    path: str
    endpoint: str  # "developer", "constrained" (ephemeral token) or "vertex"
    api_version: str
    auth_kind: str | None  # "api_key", "ephemeral_token", "bearer" or None (refused)
    credential: str | None
    started_at: float = field(default_factory=time.time)
    setup: dict[str, Any] | None = None  # the setup message body as received
    model: str | None = None
    rules: str | None = None  # the model family whose rules applied: "2.5" or "3.x"
    session_id: str | None = None
    resumption_handle: str | None = None  # handle the client asked to resume
    resumed: bool = False
    concurrent_resume_refused: bool = False  # resumed while the handle's connection was open: 1011
    initial_history: list[tuple[str, str]] = field(
        default_factory=list
    )  # (role, text) seeded by clientContent
    client_messages: int = 0  # including setup
    audio_bytes_received: int = 0
    zero_chunks_received: int = 0  # audio messages of nothing but digital zeros
    turns_answered: int = 0  # replies that reached turnComplete without interruption
    interruptions: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    images: list[SeenImage] = field(default_factory=list)  # every video frame, checked and described
    tool_responses: list[dict[str, Any]] = field(default_factory=list)
    handles_issued: list[str] = field(default_factory=list)
    go_aways: int = 0
    close_code: int | None = None  # what the emulator closed with (1006: aborted, no close frame)
    close_reason: str | None = None
    closed_by: str | None = None  # "server" or "client"
    ended_at: float | None = None
