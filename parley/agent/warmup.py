"""Do once, before the first call, what every call needs, so the first caller does not wait for it."""

from __future__ import annotations

import time

from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration


async def warm_up() -> float:
    """Do once what every call needs, so the first call starts fast: codecs, resampler, VAD, and a
    throwaway offer/answer (certificate, ICE gathering, SDP). Returns the seconds it took."""
    started = time.monotonic()
    from parley.agent.downlink import ModelAudio, PlayoutBuffer
    from parley.agent.uplink import OpusUplink
    from parley.agent.vad import SpeechDetector

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
