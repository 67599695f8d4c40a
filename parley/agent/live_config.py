"""What one call's Gemini conversation is made with (`SessionConfig`), and the parts of the Live setup
and replies that an agent profile shapes: speech language, activity detection, Google Search, the
greeting.

The composition root builds a `SessionConfig` for each call from the call's agent profile; the session
(gemini.py) only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.genai import types

from parley.agent.live_rules import family_of
from parley.agent.tools import CallContext, ToolRegistry

# How a greeting is asked for: as text in the realtime stream (allowed on every Live model, where
# clientContent is only initial history on 3.x), before the caller has said anything.
GREETING_PROMPT = (
    "The caller has just connected and has not spoken yet. Greet them now by saying, in your own voice: {}"
)

_START = {
    "high": types.StartSensitivity.START_SENSITIVITY_HIGH,
    "low": types.StartSensitivity.START_SENSITIVITY_LOW,
}
_END = {"high": types.EndSensitivity.END_SENSITIVITY_HIGH, "low": types.EndSensitivity.END_SENSITIVITY_LOW}


@dataclass
class ActivityDetection:
    """Gemini's automatic activity detection; None leaves a knob to the service."""

    start_sensitivity: str | None = None  # "high" or "low"
    end_sensitivity: str | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None

    def is_default(self) -> bool:
        return self == ActivityDetection()


@dataclass
class SessionConfig:
    model: str = "gemini-3.8-live"
    # "2.5" or "3.x": which Live rules to follow; None: by the model's name (gemini-3* is 3.x).
    rules: str | None = None
    vertex: bool = False  # Vertex AI: no `scheduling` in function responses
    voice: str = "Kore"
    system_instruction: str = ""
    uplink_chunk_ms: int = 20
    # Audio kept for re-sending after a reconnect; past this the oldest is dropped (and counted).
    resend_buffer_s: float = 15.0
    max_consecutive_failures: int = 4
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 4.0
    # On goAway, wait for a turn boundary only while at least this much of the connection is left.
    goaway_margin_s: float = 5.0
    context_compression: bool = True
    media_resolution: str | None = None  # LOW, MEDIUM or HIGH: tokens per video frame; None: the default
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    tool_timeout_s: float = 10.0
    # 3.x: quiet non-zero audio sent before audioStreamEnd, which alone does not end a turn there.
    trailing_audio_s: float = 0.5
    # Per-model knobs; None leaves them to the model. 3.x refuses all three (affective dialog: on the
    # Developer API), so setting one there fails the call at start (gemini_setup.refused_setting).
    proactive_audio: bool | None = None
    thinking_budget: int | None = None
    affective_dialog: bool | None = None
    # --- what an agent profile adds ---
    language: str | None = None  # speech language code ("en-US"); None: the model's choice
    greeting: str | None = None  # said by the agent when the call's conversation first opens
    google_search: bool = False  # grounding with Google Search
    temperature: float | None = None
    activity: ActivityDetection = field(default_factory=ActivityDetection)
    context: CallContext | None = None  # handed to tools that ask for it

    @property
    def family(self) -> str:
        """ "2.5" or "3.x": the Live rules this conversation follows (docs/gemini-3x-rules.md)."""
        return family_of(self.model, self.rules)


def shape_setup(config: types.LiveConnectConfig, cfg: SessionConfig) -> None:
    """The profile's part of the setup: language, activity detection, temperature, Google Search."""
    if cfg.language and config.speech_config is not None:
        config.speech_config.language_code = cfg.language
    if cfg.temperature is not None:
        config.temperature = cfg.temperature
    activity = cfg.activity
    if not activity.is_default():
        config.realtime_input_config = types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                start_of_speech_sensitivity=_START.get(activity.start_sensitivity or ""),
                end_of_speech_sensitivity=_END.get(activity.end_sensitivity or ""),
                prefix_padding_ms=activity.prefix_padding_ms,
                silence_duration_ms=activity.silence_duration_ms,
            )
        )
    if cfg.google_search:
        config.tools = [*(config.tools or []), types.Tool(google_search=types.GoogleSearch())]


def greeting_text(greeting: str) -> str:
    return GREETING_PROMPT.format(greeting)
