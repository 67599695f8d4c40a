"""Every knob of the emulator, with the defaults the product runs with.

One mutable dataclass, shared by all connections and read at the moment each decision is
made, so a test can change a fault between turns or between connections. Timers of a
connection (lifetime, goAway, drop-after-seconds) use the values in force when that
connection's setup completed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL_PATTERNS = (
    "models/gemini-*",
    "projects/*/locations/*/publishers/google/models/gemini-*",
)


@dataclass
class EmulatorOptions:
    # --- TLS -------------------------------------------------------------------------------
    # Where to keep the CA and server certificate; None: a fresh temporary directory per
    # start(), removed by stop(). A directory is reused across runs (SSL_CERT_FILE stays valid).
    cert_dir: str | None = None

    # --- who may connect ---------------------------------------------------------------
    # fnmatch patterns a setup.model must match; anything else is closed with 1008.
    model_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_MODEL_PATTERNS))
    # Accepted API keys; None accepts any non-empty key (tokens and bearer credentials are
    # never checked beyond being present).
    api_keys: list[str] | None = None

    # --- replies -----------------------------------------------------------------------
    reply_delay_s: float = 0.05  # from end of the user's turn to the first reply message
    reply_chunk_ms: int = 200  # audio per modelTurn message
    reply_speed: float = 4.0  # reply audio is sent this many times faster than real time
    # How fast the emulator assumes the client plays the reply (1.0 = real time). It sets
    # how long after the first chunk turnComplete comes and the barge-in window. Tests
    # raise it to finish turns quickly.
    playout_speed: float = 1.0

    # --- voice activity detection (defaults for what setup leaves unset) ----------------
    vad_threshold_dbfs: float = -45.0
    vad_silence_ms: int = 500
    vad_prefix_padding_ms: int = 60

    # --- limits ------------------------------------------------------------------------
    lifetime_s: float = 600.0  # connection lifetime, then close 1000
    # goAway this long before the lifetime ends (at most half of it); None: as the model's rules say
    # (50 s on 2.5, 60 s on 3.x).
    goaway_lead_s: float | None = None
    context_token_limit: int = 128000  # without contextWindowCompression: close 1007 past it
    audio_tokens_per_s: float = 25.0
    handle_ttl_s: float = 7200.0  # resumption handles stay valid this long

    # --- model rules (parley/emulator/rules.py, docs/gemini-3x-rules.md) ----------------
    # "2.5" or "3.x" for every connection; None: chosen by the setup's model name (gemini-3* is 3.x).
    rules: str | None = None
    # One rule each, on or off for every model; None: as the model's rule set says.
    history_only_client_content: bool | None = None  # clientContent only as initial history, else 1007
    refuse_concurrent_resume: bool | None = None  # resuming a handle of an open connection: 1011
    trailing_audio_required: bool | None = None  # audioStreamEnd / digital zeros do not end a turn
    non_blocking_tools: bool | None = None  # function calls NON_BLOCKING unless declared BLOCKING
    usage_only_content: bool | None = None  # a usage-only serverContent before each reply's audio
    refuse_setup_fields: bool | None = None  # proactiveAudio=false, thinkingConfig, affective dialog: 1007
    concurrent_resume_fails_after_s: float = 0.05  # how long after setupComplete that 1011 comes

    # --- fault injection ---------------------------------------------------------------
    goaway_after_s: float | None = None  # extra goAway this long after setup
    goaway_time_left_s: float | None = None  # ...announcing this (and ending then); None: the lifetime's rest
    drop_after_turns: int | None = None  # drop mid-reply of the turn after N answered turns (per connection)
    drop_after_s: float | None = None  # drop this long after setup
    drop_code: int | None = 1011  # close code of a drop; None aborts the TLS/TCP stream (client sees 1006)
    drop_reason: str = "Internal error encountered."
    refuse_resumption: bool = False  # every resumption handle is "not found"
    resumable_false: bool = False  # updates after turns say resumable=false, no handle
    tool_call: str | None = None  # declared function to call on a turn ("*": the first declared); None: never
    tool_call_args: dict[str, Any] = field(default_factory=dict)
    tool_call_turns: list[int] | None = None  # session turn numbers (1-based) to call on; None: every turn

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EmulatorOptions:
        options = cls()
        options.update(data)
        return options

    @classmethod
    def from_json_file(cls, path: str) -> EmulatorOptions:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a scenario file must hold a JSON object of option names")
        return cls.from_mapping(data)

    def update(self, data: Mapping[str, Any]) -> None:
        """Set options by name (scenario files); unknown names are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown emulator option(s): {', '.join(unknown)}")
        for name, value in data.items():
            setattr(self, name, value)
