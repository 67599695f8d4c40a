"""Call recordings: both sides in one stereo Ogg/Opus file per call (left: the caller, right: the agent).

The call hands each 20 ms of the agent's outgoing audio (48 kHz, as it leaves for the caller) and each
20 ms of the caller's decoded audio (16 kHz) to its `CallRecording`, which only queues them. One thread
per process encodes and writes every call's file as the call goes: nothing is held in memory beyond a
short queue, and a recording that cannot keep up loses frames (counted) rather than slowing a call.
The agent's frames are the clock: each one takes the caller audio that came since, so the two sides
stay aligned through silences.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np

logger = logging.getLogger(__name__)

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
MAX_QUEUED = 500  # frames waiting for the thread, all calls together (10 s of one call)
MAX_CALLER_LAG = 2 * RATE  # caller audio ahead of the agent's clock beyond 2 s is dropped
MAX_GAP = 60 * RATE  # silence filled in at most at once where the agent's track skipped ahead


class _File:
    """One call's file, used only on the recording thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container: Any = av.open(str(path), "w", format="ogg")
        self.stream: Any = self.container.add_stream(
            "libopus", rate=RATE, layout="stereo", options={"application": "voip", "compression_level": "5"}
        )
        self.stream.bit_rate = 48000
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self.caller = np.zeros(0, np.int16)
        self.pts = 0
        self.first_pts: int | None = None

    def caller_pcm(self, pcm: bytes) -> None:
        mono = np.frombuffer(pcm, np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(mono, format="s16", layout="mono")
        frame.sample_rate = 16000
        for out in self.resampler.resample(frame):
            self.caller = np.concatenate([self.caller, out.to_ndarray().reshape(-1)])
        if self.caller.size > MAX_CALLER_LAG:
            self.caller = self.caller[-MAX_CALLER_LAG:]

    def agent_frame(self, samples: np.ndarray, pts: int) -> None:
        if self.first_pts is None:
            self.first_pts = pts
        # Silence the track skipped (a stalled loop) is silence in the file too: both sides stay in step.
        gap = min(pts - self.first_pts - self.pts, MAX_GAP)
        for _ in range(max(0, gap) // FRAME):
            self._write(np.zeros(FRAME, np.int16))
        self._write(samples)

    def _write(self, samples: np.ndarray) -> None:
        left = self.caller[:FRAME]
        self.caller = self.caller[FRAME:]
        if left.size < FRAME:
            left = np.concatenate([left, np.zeros(FRAME - left.size, np.int16)])
        stereo = np.empty(2 * FRAME, np.int16)
        stereo[0::2], stereo[1::2] = left, samples[:FRAME]
        frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = self.pts
        self.pts += FRAME
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


class Recordings:
    """The recording thread of one process, and the recordings it writes."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._queue: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._pending = 0  # frames queued; approximate (no lock), which is all a bound needs
        self._thread: threading.Thread | None = None
        self.dropped_frames = 0
        self.failed = 0

    def path(self, call_id: str) -> Path:
        return self.folder / f"{call_id}.ogg"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recordings", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish every open file (blocking: call from a thread)."""
        if self._thread is not None:
            self._queue.put(("", "stop", None))
            self._thread.join(30)
            self._thread = None

    def recording(self, call_id: str) -> CallRecording:
        return CallRecording(self, call_id)

    def _put(self, item: tuple[str, str, Any], frame: bool = True) -> None:
        """Never blocks: a frame beyond the bound is dropped and counted; open and close always go."""
        if frame:
            if self._pending >= MAX_QUEUED:
                self.dropped_frames += 1
                return
            self._pending += 1
        self._queue.put_nowait(item)

    def _run(self) -> None:
        files: dict[str, _File] = {}
        while True:
            call_id, op, data = self._queue.get()
            if op in ("caller", "agent"):
                self._pending -= 1
            if op == "stop":
                break
            try:
                if op == "open":
                    files[call_id] = _File(self.path(call_id))
                elif call_id not in files:
                    continue
                elif op == "caller":
                    files[call_id].caller_pcm(data)
                elif op == "agent":
                    files[call_id].agent_frame(*data)
                elif op == "close":
                    files.pop(call_id).close()
            except Exception:
                self.failed += 1
                logger.exception("recording of call %s failed; it stops here", call_id[:8])
                broken = files.pop(call_id, None)
                if broken is not None:
                    with contextlib.suppress(Exception):
                        broken.container.close()
        for file in files.values():
            with contextlib.suppress(Exception):
                file.close()


class CallRecording:
    """What a call feeds its recording (parley/agent's CallAudioTap): every method only queues."""

    def __init__(self, recordings: Recordings, call_id: str) -> None:
        self._recordings = recordings
        self._id = call_id
        recordings._put((call_id, "open", None), frame=False)

    def caller(self, pcm: bytes) -> None:
        self._recordings._put((self._id, "caller", pcm))

    def agent(self, samples: np.ndarray, pts: int) -> None:
        self._recordings._put((self._id, "agent", (samples.copy(), pts)))

    def close(self) -> None:
        self._recordings._put((self._id, "close", None), frame=False)
