"""Do once, before the first call, what every call needs, so the first caller does not wait for it."""

from __future__ import annotations

import time

import pydantic
from aiortc import RTCPeerConnection
from google.genai import types

from parley.agent.ice import rtc_configuration

# The SDK's Live models that a session meets (built with the message types they hold).
SDK_MODELS = ("Blob", "Content", "Part", "UsageMetadata", "Transcription", "FunctionCall", "FunctionResponse")


def build_sdk_models() -> None:
    """Build the SDK's pydantic models now: they are built on first use (`defer_build`), which put
    20-60 ms event-loop stalls into the first call's set-up and first turn, stalling every other call."""
    for name in dir(types):
        model = getattr(types, name)
        if (name.startswith("Live") or name in SDK_MODELS) and isinstance(model, type):
            if issubclass(model, pydantic.BaseModel):
                model.model_rebuild(raise_errors=False)


async def warm_up(sdk: bool = True) -> float:
    """Do once what every call needs, so the first call starts fast: the SDK's models (with `sdk`),
    codecs, resampler, VAD, comfort noise, and a throwaway offer/answer (certificate, ICE gathering,
    SDP). Returns the seconds it took."""
    started = time.monotonic()
    if sdk:
        build_sdk_models()
    from parley.agent.downlink import ModelAudio, PlayoutBuffer
    from parley.agent.live_rules import ComfortNoise
    from parley.agent.uplink import OpusUplink
    from parley.agent.vad import SpeechDetector

    ComfortNoise()  # its noise, made once per process, imports numpy.random: 11-13 ms
    OpusUplink(lambda pcm, at: None)
    ModelAudio(PlayoutBuffer()).push(bytes(960), time.monotonic())
    SpeechDetector()
    offerer = RTCPeerConnection(rtc_configuration([]))
    answerer = RTCPeerConnection(rtc_configuration([]))
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        offerer.createDataChannel("events")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
    finally:
        await offerer.close()
        await answerer.close()
    return time.monotonic() - started
