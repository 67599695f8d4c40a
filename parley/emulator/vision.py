"""What the emulator makes of the video frames a client sends: checked JPEGs, their cost, a description.

The service takes `realtimeInput.video` (or a `mediaChunks` blob) holding one `image/jpeg` still. Each
frame costs input tokens by the session's `mediaResolution` (LOW 64, MEDIUM 256, HIGH 256 zoomed; 256
when unset). The emulator decodes every frame, refuses one that is not a decodable JPEG as the service
refuses bad input (close 1007), and remembers the last one so its reply transcript can say what it saw:
"I see a 768x432 mostly red image". That sentence is how a test proves a frame's content crossed the
whole path from a camera to Gemini.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

JPEG_MIMES = ("image/jpeg", "image/jpg")
TOKENS_PER_FRAME = {"MEDIA_RESOLUTION_LOW": 64, "MEDIA_RESOLUTION_MEDIUM": 256, "MEDIA_RESOLUTION_HIGH": 256}
DEFAULT_TOKENS_PER_FRAME = 256
MAX_SIDE = 4096  # larger stills are refused rather than decoded


@dataclass
class SeenImage:
    width: int
    height: int
    colour: str
    share: float  # of the sampled pixels that have that colour
    size_bytes: int
    at: float  # when it was received (the caller says which clock)

    def describe(self) -> str:
        return f"I see a {self.width}x{self.height} mostly {self.colour} image"


class BadImage(ValueError):
    pass


def tokens_per_frame(media_resolution: object) -> int:
    name = str(media_resolution or "").upper()
    if name and not name.startswith("MEDIA_RESOLUTION_"):
        name = "MEDIA_RESOLUTION_" + name
    return TOKENS_PER_FRAME.get(name, DEFAULT_TOKENS_PER_FRAME)


def inspect_jpeg(data: bytes, at: float) -> SeenImage:
    """Decode a JPEG still and name its dominant colour; BadImage if it is not one."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-16:]:
        raise BadImage("the image is not a JPEG (no SOI/EOI markers)")
    decoder = av.CodecContext.create("mjpeg", "r")
    decoder.thread_count = 1
    try:
        frames = list(decoder.decode(av.Packet(data)))
    except av.FFmpegError as exc:
        raise BadImage(f"the JPEG could not be decoded: {exc}") from None
    if not frames:
        raise BadImage("the JPEG could not be decoded")
    frame = frames[0]
    if not 0 < frame.width <= MAX_SIDE or not 0 < frame.height <= MAX_SIDE:
        raise BadImage(f"the image is {frame.width}x{frame.height}, larger than {MAX_SIDE} px")
    step = max(1, max(frame.width, frame.height) // 96)
    rgb = frame.to_ndarray(format="rgb24")[::step, ::step].reshape(-1, 3)
    colour, share = dominant_colour(rgb)
    return SeenImage(frame.width, frame.height, colour, share, len(data), at)


# Hue (degrees) where each named hue range ends, going round from red.
HUE_EDGES = ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"),
             (255, "blue"), (330, "magenta"), (360, "red"))  # fmt: skip


def dominant_colour(rgb: np.ndarray) -> tuple[str, float]:
    """The commonest colour name among RGB pixels (n x 3, uint8), and its share."""
    if rgb.size == 0:
        return "black", 1.0
    values = rgb.astype(np.float32) / 255.0
    high, low = values.max(axis=1), values.min(axis=1)
    chroma = high - low
    r, g, b = values[:, 0], values[:, 1], values[:, 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = (
        np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
        * 60.0
    )
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    names = np.full(len(values), "grey", dtype=object)
    names[(saturation < 0.25) & (high > 0.8)] = "white"
    coloured = (saturation >= 0.25) & (high >= 0.2)
    start = 0.0
    for edge, name in HUE_EDGES:
        names[coloured & (hue >= start) & (hue < edge)] = name
        start = edge
    names[high < 0.2] = "black"
    labels, counts = np.unique(names.astype(str), return_counts=True)
    best = int(np.argmax(counts))
    return str(labels[best]), float(counts[best]) / len(values)
