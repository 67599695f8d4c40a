"""What a Gemini Live connection is set up with, per model family, and the knobs a model refuses.

The setup is built anew for every connection: a resume carries the handle, a fresh session that has a
transcript to seed carries `historyConfig` on 3.x (its only way to take history), and nothing a model
refuses is ever sent: a refused knob set by the user fails the call at start, naming the setting.
"""

from __future__ import annotations

from google.genai import types

from parley.agent.live_config import SessionConfig, shape_setup


def refused_setting(cfg: SessionConfig) -> str | None:
    """Why the model would refuse this setup (a message naming the setting), or None."""
    if cfg.family != "3.x":
        return None
    if cfg.proactive_audio is False:
        return f"{cfg.model} always has proactive audio: PARLEY_PROACTIVE_AUDIO=false is not supported"
    if cfg.thinking_budget is not None:
        return f"{cfg.model} does not support thinking settings: unset PARLEY_THINKING_BUDGET"
    if cfg.affective_dialog is not None and not cfg.vertex:
        return f"{cfg.model} has no affective dialog on the Gemini API: unset PARLEY_AFFECTIVE_DIALOG"
    return None


def connect_config(cfg: SessionConfig, handle: str | None, seeding: bool) -> types.LiveConnectConfig:
    """The setup of one connection: resuming `handle`, or fresh (with history to seed when `seeding`)."""
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=cfg.voice)
            )
        ),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=handle),
    )
    if cfg.system_instruction:
        config.system_instruction = types.Content(parts=[types.Part(text=cfg.system_instruction)])
    if cfg.media_resolution:
        config.media_resolution = types.MediaResolution(f"MEDIA_RESOLUTION_{cfg.media_resolution.upper()}")
    if cfg.context_compression:
        config.context_window_compression = types.ContextWindowCompressionConfig(
            sliding_window=types.SlidingWindow()
        )
    family = cfg.family
    declarations = cfg.tools.declarations(family)
    if declarations:
        config.tools = [types.Tool(function_declarations=declarations)]
    if seeding and family == "3.x":
        # 3.x takes clientContent only as initial history, announced here.
        config.history_config = types.HistoryConfig(initial_history_in_client_content=True)
    if family != "3.x":  # refused_setting() stops the call before a 3.x setup could carry these
        if cfg.proactive_audio is not None:
            config.proactivity = types.ProactivityConfig(proactive_audio=cfg.proactive_audio)
        if cfg.thinking_budget is not None:
            config.thinking_config = types.ThinkingConfig(thinking_budget=cfg.thinking_budget)
        if cfg.affective_dialog is not None:
            config.enable_affective_dialog = cfg.affective_dialog
    elif cfg.vertex and cfg.affective_dialog is not None:
        config.enable_affective_dialog = cfg.affective_dialog
    shape_setup(config, cfg)
    return config


def seed_turns(transcript: list[tuple[str, str]]) -> list[types.Content | types.ContentDict]:
    return [
        types.Content(role="user" if role == "user" else "model", parts=[types.Part(text=text)])
        for role, text in transcript
        if text
    ]
