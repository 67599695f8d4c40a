"""The parts of a setup message the emulator acts on, read once when the connection starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .grounding import wants_search
from .options import EmulatorOptions
from .protocol import CLOSE_INVALID_ARGUMENT, ProtocolError, has, pick, pick_path
from .turns import TurnDetector
from .vad import config_for
from .vision import tokens_per_frame


@dataclass
class SessionConfig:
    automatic_activity: bool = True
    interrupts: bool = True  # activityHandling != NO_INTERRUPTION
    input_transcription: bool = False
    output_transcription: bool = False
    text_replies: bool = False  # responseModalities is TEXT only
    resumption: bool = False
    compression_trigger: int | None = None  # tokens; None: compression off
    compression_target: int = 0
    explicit_vad_signal: bool = False
    function_names: list[str] = field(default_factory=list)
    blocking_functions: set[str] = field(default_factory=set)  # declared behavior: BLOCKING
    non_blocking_functions: set[str] = field(default_factory=set)  # declared behavior: NON_BLOCKING
    initial_history: bool = False  # historyConfig.initialHistoryInClientContent
    tokens_per_frame: int = 256  # by generationConfig.mediaResolution
    google_search: bool = False  # grounded replies carry groundingMetadata


def parse_int(value: Any, where: str) -> int:
    # int64 fields arrive as JSON strings in protobuf JSON; int32 as numbers.
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}': {value!r}") from None


def read_tools(cfg: SessionConfig, tools: Any) -> None:
    """Function names and their declared behavior, from setup.tools or a contextUpdate."""
    cfg.function_names = []
    cfg.blocking_functions = set()
    cfg.non_blocking_functions = set()
    if not isinstance(tools, list):
        return
    for tool in tools:
        for decl in pick(tool, "function_declarations", []) or []:
            name = pick(decl, "name")
            if not isinstance(name, str):
                continue
            cfg.function_names.append(name)
            behavior = pick(decl, "behavior")
            if behavior == "BLOCKING":
                cfg.blocking_functions.add(name)
            elif behavior == "NON_BLOCKING":
                cfg.non_blocking_functions.add(name)


def configure(
    setup: dict[str, Any], opts: EmulatorOptions, endpoint: str
) -> tuple[SessionConfig, TurnDetector]:
    cfg = SessionConfig()
    ric = pick(setup, "realtime_input_config")
    aad = pick(ric, "automatic_activity_detection")
    cfg.automatic_activity = not bool(pick(aad, "disabled", False))
    cfg.interrupts = pick(ric, "activity_handling") != "NO_INTERRUPTION"
    silence = parse_int(pick(aad, "silence_duration_ms", opts.vad_silence_ms), "silence_duration_ms")
    prefix = parse_int(pick(aad, "prefix_padding_ms", opts.vad_prefix_padding_ms), "prefix_padding_ms")
    vad = config_for(
        opts.vad_threshold_dbfs,
        silence_ms=silence,
        start_ms=prefix,
        start_sensitivity=pick(aad, "start_of_speech_sensitivity"),
        end_sensitivity=pick(aad, "end_of_speech_sensitivity"),
    )
    # Keep at least 100 ms before the committing speech run so word onsets survive.
    detector = TurnDetector(cfg.automatic_activity, vad, preroll_ms=max(prefix, 100))
    cfg.input_transcription = has(setup, "input_audio_transcription")
    cfg.output_transcription = has(setup, "output_audio_transcription")
    modalities = pick_path(setup, "generation_config", "response_modalities") or pick(
        setup, "response_modalities"
    )
    if isinstance(modalities, list):
        upper = [str(m).upper() for m in modalities]
        cfg.text_replies = "TEXT" in upper and "AUDIO" not in upper
    cfg.resumption = pick(setup, "session_resumption") is not None
    cwc = pick(setup, "context_window_compression")
    if cwc is not None:
        trigger = pick(cwc, "trigger_tokens")
        # Documented defaults: trigger at 80% of the context window, slide down to half the trigger.
        default_trigger = int(opts.context_token_limit * 0.8)
        cfg.compression_trigger = (
            parse_int(trigger, "trigger_tokens") if trigger is not None else default_trigger
        )
        target = pick_path(cwc, "sliding_window", "target_tokens")
        cfg.compression_target = (
            parse_int(target, "target_tokens") if target is not None else cfg.compression_trigger // 2
        )
    # Vertex only: the SDK refuses explicitVadSignal for the Developer API.
    cfg.explicit_vad_signal = endpoint == "vertex" and bool(pick(setup, "explicit_vad_signal", False))
    read_tools(cfg, pick(setup, "tools"))
    cfg.google_search = wants_search(pick(setup, "tools"))
    cfg.initial_history = bool(pick_path(setup, "history_config", "initial_history_in_client_content"))
    cfg.tokens_per_frame = tokens_per_frame(pick_path(setup, "generation_config", "media_resolution"))
    return cfg, detector
