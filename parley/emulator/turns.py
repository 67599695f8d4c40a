"""User-turn segmentation: turns 16 kHz input audio into SpeechStarted / SpeechEnded events.

Two modes, as `realtimeInputConfig.automaticActivityDetection.disabled` selects:
- automatic: the energy VAD decides; `audioStreamEnd` ends an ongoing turn at once;
- manual: only `activityStart` / `activityEnd` delimit turns, audio outside them is ignored.
The audio of each turn is kept so the emulator can speak it back. In automatic mode it
starts `preroll_ms` before the speech run that committed the start (the Live API guide's
other reading of `prefixPaddingMs`: "the amount of audio to include before speech is
detected") and ends `tail_ms` after the last speech frame, not after the whole hangover.

With `needs_real_audio` (the 3.8 rule) `audioStreamEnd` ends nothing and frames of digital zeros are
not heard at all: only trailing real audio, however quiet, lets the VAD's silence run out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .audio import INPUT_RATE, pcm_to_array
from .vad import FRAME_MS, EnergyVad, VadConfig

FRAME_BYTES = INPUT_RATE * FRAME_MS // 1000 * 2


@dataclass
class SpeechStarted:
    pass


@dataclass
class SpeechEnded:
    pcm: bytes  # the turn's audio, 16 kHz PCM16 mono
    reason: str  # "vad", "activity_end" or "audio_stream_end"


TurnEvent = SpeechStarted | SpeechEnded


class TurnDetector:
    def __init__(self, automatic: bool, vad_config: VadConfig, preroll_ms: int, tail_ms: int = 100) -> None:
        self.automatic = automatic
        self._vad = EnergyVad(vad_config)
        self._preroll_frames = max(0, preroll_ms) // FRAME_MS
        self._tail_frames = max(0, tail_ms) // FRAME_MS
        start_frames = max(1, -(-vad_config.start_ms // FRAME_MS))
        self._history: deque[bytes] = deque(maxlen=self._preroll_frames + start_frames + 1)
        self._pending = b""  # bytes short of a whole frame
        self._turn: list[bytes] = []
        self._last_speech = 0  # frames of _turn up to and including the last speech frame
        self._manual_active = False
        self.needs_real_audio = False

    @property
    def in_turn(self) -> bool:
        return self._vad.active if self.automatic else self._manual_active

    def feed(self, pcm: bytes) -> list[TurnEvent]:
        if not self.automatic:
            if self._manual_active:
                self._turn.append(pcm)
            return []
        events: list[TurnEvent] = []
        data = self._pending + pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        for off in range(0, whole, FRAME_BYTES):
            frame = data[off : off + FRAME_BYTES]
            if self.needs_real_audio and not any(frame):
                continue  # digital zeros: as if nothing had been sent
            decision = self._vad.process(pcm_to_array(frame))
            if not self._vad.active and not decision.ended:
                self._history.append(frame)
                continue
            if decision.started:
                self._history.append(frame)
                keep = min(len(self._history), self._preroll_frames + decision.run_frames)
                self._turn = list(self._history)[-keep:]
                self._last_speech = len(self._turn)
                self._history.clear()
                events.append(SpeechStarted())
                continue
            self._turn.append(frame)
            if decision.speech:
                self._last_speech = len(self._turn)
            if decision.ended:
                events.append(self._finish("vad"))
        return events

    def _finish(self, reason: str) -> SpeechEnded:
        frames = self._turn[: self._last_speech + self._tail_frames] if self.automatic else self._turn
        self._turn = []
        self._last_speech = 0
        return SpeechEnded(pcm=b"".join(frames), reason=reason)

    def activity_start(self) -> list[TurnEvent]:
        if self.automatic or self._manual_active:
            return []
        self._manual_active = True
        self._turn = []
        return [SpeechStarted()]

    def activity_end(self) -> list[TurnEvent]:
        if self.automatic or not self._manual_active:
            return []
        self._manual_active = False
        return [self._finish("activity_end")]

    def stream_end(self) -> list[TurnEvent]:
        """`audioStreamEnd`: the client's mic is off, so an ongoing turn ends now."""
        if not self.automatic or self.needs_real_audio:
            return []
        if self._pending and self._vad.active:
            self._turn.append(self._pending)
            self._last_speech = len(self._turn)
        self._pending = b""
        self._history.clear()
        if not self._vad.active:
            self._vad.reset()
            return []
        self._vad.reset()
        return [self._finish("audio_stream_end")]
