"""A synthetic camera for the headless caller, the tests and the bench: solid colours at a set rate.

`ColourCamera` is an aiortc video track whose picture is one colour (changeable at any moment), paced on
an absolute clock. It can pause (send nothing, as `replaceTrack(null)` does in a browser), go black (a
browser track with `enabled = false`), and flood key frames (a hostile peer).
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK = 90000
COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "blue": (20, 40, 220),
    "yellow": (230, 220, 20),
    "magenta": (210, 30, 200),
    "white": (250, 250, 250),
    "black": (0, 0, 0),
}


class ColourCamera(MediaStreamTrack):
    kind = "video"

    def __init__(self, colour: str = "red", width: int = 640, height: int = 360, fps: float = 5.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.colour = colour
        self.black = False
        self.flood_keyframes = False
        self.sender: RTCRtpSender | None = None
        self.frames = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._started: float | None = None
        self._cache: tuple[str, bool, int, int] | None = None
        self._picture: np.ndarray | None = None  # yuv420p planes, one above the other
        self.sent_at: list[tuple[float, str]] = []  # (monotonic time, colour) of every frame produced

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    async def recv(self) -> av.VideoFrame:
        if self._started is None:
            self._started = time.monotonic()
        while True:
            due = self._started + self.frames / self.fps
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._resumed.is_set():
                break
            await self._resumed.wait()
            # A paused sender skips the frames it did not send; its clock (and RTP time) runs on.
            self.frames = int((time.monotonic() - self._started) * self.fps)
        self.frames += 1
        frame = self._frame()
        now = time.monotonic()
        frame.pts = int((now - self._started) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent_at.append((now, "black" if self.black else self.colour))
        if self.flood_keyframes and self.sender is not None:
            self.sender._send_keyframe()
        return frame

    def _frame(self) -> av.VideoFrame:
        key = (self.colour, self.black, self.width, self.height)
        if key != self._cache or self._picture is None:
            rgb = np.zeros((self.height, self.width, 3), np.uint8)
            if not self.black:
                rgb[:] = COLOURS[self.colour]
                # Some detail, so the encoder has something to spend bits on.
                rgb[:: max(1, self.height // 8), :] = 255
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            self._picture = yuv.to_ndarray()
            self._cache = key
        # A new frame each time: the sender encodes on a thread while the next one is made.
        return av.VideoFrame.from_ndarray(self._picture, format="yuv420p")
