"""Do once, before the first call, what every call needs, so the first caller does not wait for it."""

from __future__ import annotations

import time
import typing

import pydantic
from aiortc import RTCPeerConnection
from google.genai import types

from parley.agent.ice import rtc_configuration

# The SDK's models that a session meets besides the Live ones, each built with the models it holds.
SDK_MODELS = (
    "Blob", "Content", "Part", "UsageMetadata", "Transcription", "FunctionCall", "FunctionResponse",
    "FunctionDeclaration", "Schema", "Tool", "GoogleSearch", "HttpOptions",
)  # fmt: skip


def build_sdk_models() -> None:
    """Build the SDK's pydantic models now: they are built on first use (`defer_build`), which put
    20-60 ms event-loop stalls into the first call's set-up and first turn, stalling every other call.
    A model's validator is its own: building `LiveConnectConfig` leaves `SessionResumptionConfig`
    to build when a call first makes one (10 ms), so every model a field can hold is built too."""
    pending = [
        model
        for name in dir(types)
        if (name.startswith("Live") or name in SDK_MODELS)
        and isinstance(model := getattr(types, name), type)
        and issubclass(model, pydantic.BaseModel)
    ]
    built: set[type[pydantic.BaseModel]] = set()
    while pending:
        model = pending.pop()
        if model not in built:
            built.add(model)
            model.model_rebuild(raise_errors=False)
            for field in model.model_fields.values():
                pending.extend(_models_in(field.annotation))


def _models_in(annotation: object) -> typing.Iterator[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


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
