"""Energy-based voice activity detection on 16 kHz PCM16 frames.

Deliberately simple: frame RMS in dBFS against a threshold, with
- a start guard (speech must last `start_ms` before it counts, as the Live API's
  `prefixPaddingMs` is documented: "the required duration of detected speech before
  start-of-speech is committed"), which rejects clicks and pops;
- hysteresis (once speaking, a frame must fall `hysteresis_db` below the start threshold
  to count as silence), so word endings do not flap;
- a hangover (`silence_ms` of non-speech ends the activity: `silenceDurationMs`);
- an adaptive noise floor (fast down, slow up), so steady background noise that is louder
  than the absolute threshold stops counting as speech after a few seconds.
Timing is counted in audio samples, never wall time, so audio sent faster than real time
(as tests do) is judged exactly like audio sent in real time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .audio import Int16Array, dbfs

FRAME_MS = 20


@dataclass
class VadConfig:
    threshold_dbfs: float = -45.0
    start_ms: int = 60
    silence_ms: int = 500
    hysteresis_db: float = 6.0
    snr_db: float = 15.0  # speech must also stand this far above the noise floor
    floor_rise_db_per_s: float = 2.5


@dataclass
class VadDecision:
    """Per-frame outcome: `started` / `ended` mark the frame where activity was committed."""

    speech: bool  # this frame is loud enough to be speech
    started: bool = False
    ended: bool = False
    run_frames: int = 0  # when started: how many frames the committing speech run spans


# START_SENSITIVITY_* / END_SENSITIVITY_* shift the threshold and hysteresis.
_START_SHIFT_DB = {"START_SENSITIVITY_HIGH": -5.0, "START_SENSITIVITY_LOW": 8.0}
_END_HYSTERESIS_DB = {"END_SENSITIVITY_HIGH": 3.0, "END_SENSITIVITY_LOW": 10.0}


def config_for(
    threshold_dbfs: float,
    silence_ms: int,
    start_ms: int,
    start_sensitivity: str | None,
    end_sensitivity: str | None,
) -> VadConfig:
    cfg = VadConfig(threshold_dbfs=threshold_dbfs, start_ms=max(0, start_ms), silence_ms=max(0, silence_ms))
    cfg.threshold_dbfs += _START_SHIFT_DB.get(str(start_sensitivity or ""), 0.0)
    cfg.hysteresis_db = _END_HYSTERESIS_DB.get(str(end_sensitivity or ""), cfg.hysteresis_db)
    return cfg


class EnergyVad:
    """Frame-by-frame speech/non-speech state machine."""

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self.active = False
        self._floor: float | None = None
        self._run = 0  # consecutive speech frames while inactive
        self._silence = 0  # consecutive non-speech frames while active
        self._rise = config.floor_rise_db_per_s * FRAME_MS / 1000.0

    def reset(self) -> None:
        self.active = False
        self._run = 0
        self._silence = 0

    def _frames(self, ms: int) -> int:
        return max(1, -(-ms // FRAME_MS))

    def process(self, frame: Int16Array) -> VadDecision:
        level = dbfs(frame)
        floor = level if self._floor is None else min(level, self._floor + self._rise)
        self._floor = floor
        cfg = self.config
        start_threshold = max(cfg.threshold_dbfs, floor + cfg.snr_db)
        if not self.active:
            speech = level >= start_threshold
            self._run = self._run + 1 if speech else 0
            if speech and self._run >= self._frames(cfg.start_ms):
                self.active = True
                self._silence = 0
                run, self._run = self._run, 0
                return VadDecision(speech=True, started=True, run_frames=run)
            return VadDecision(speech=speech)
        speech = level >= start_threshold - cfg.hysteresis_db
        self._silence = 0 if speech else self._silence + 1
        if not speech and self._silence * FRAME_MS >= cfg.silence_ms:
            self.active = False
            self._silence = 0
            return VadDecision(speech=False, ended=True)
        return VadDecision(speech=speech)
