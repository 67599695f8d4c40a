"""Wire-format helpers: key casing, base64, client message parsing, close codes.

The real service is a protobuf JSON endpoint, so it accepts both the proto field name
(snake_case) and its JSON name (camelCase) for every field, and both base64 alphabets for
bytes. The google-genai SDK relies on that: it sends `setup` camelCase but `realtime_input`,
`tool_response` and `client_content` snake_case. Everything here therefore looks fields up
under either spelling instead of rewriting the message (which would also rewrite user data
such as function-call arguments).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# WebSocket close codes as the real service uses them: it maps the gRPC status of the
# failed stream onto a close code (INVALID_ARGUMENT -> 1007, PERMISSION_DENIED / NOT_FOUND /
# FAILED_PRECONDITION -> 1008, INTERNAL / UNAVAILABLE -> 1011, CANCELLED -> 1000).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006  # never sent on the wire: what a client reports when no close frame came
CLOSE_INVALID_ARGUMENT = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011

# RFC 6455: the close frame payload is at most 125 bytes, 2 of which are the code.
MAX_CLOSE_REASON_BYTES = 123

TOP_LEVEL_MESSAGES = ("setup", "client_content", "realtime_input", "tool_response", "context_update")
REALTIME_INPUT_FIELDS = (
    "media_chunks",
    "audio",
    "video",
    "text",
    "activity_start",
    "activity_end",
    "audio_stream_end",
)
DEFAULT_INPUT_RATE = 16000


class ProtocolError(Exception):
    """A client error the service answers by closing the socket with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


# Cached: every message of every session looks up the same few names (a third of the emulator's
# per-message cost before); bounded, as clients choose the keys.
@functools.lru_cache(maxsize=4096)
def to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=4096)
def to_snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def has(obj: Any, name: str) -> bool:
    """True if `obj` is a mapping holding `name` (snake_case) in either casing."""
    return isinstance(obj, Mapping) and (name in obj or to_camel(name) in obj)


def pick(obj: Any, name: str, default: Any = None) -> Any:
    """The value of field `name` (given snake_case) under either casing, else `default`."""
    if not isinstance(obj, Mapping):
        return default
    if name in obj:
        return obj[name]
    camel = to_camel(name)
    if camel in obj:
        return obj[camel]
    return default


def pick_path(obj: Any, *names: str, default: Any = None) -> Any:
    """Nested `pick`: pick_path(setup, "realtime_input_config", "activity_handling")."""
    cur = obj
    for name in names:
        cur = pick(cur, name)
        if cur is None:
            return default
    return cur


def canonical_keys(obj: Mapping[str, Any]) -> set[str]:
    return {to_snake(k) for k in obj}


def decode_b64(data: Any, where: str) -> bytes:
    """Decode protobuf-JSON bytes: standard or URL-safe alphabet, padded or not."""
    if not isinstance(data, str):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}' (TYPE_BYTES): not a string")
    text = data.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed"
        ) from None


def encode_b64(data: bytes) -> str:
    # The real server writes the standard alphabet with padding (protobuf JSON).
    return base64.b64encode(data).decode("ascii")


def dumps(message: Mapping[str, Any]) -> bytes:
    """Server messages: compact camelCase JSON, sent in binary frames like the real service."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def close_reason(text: str) -> str:
    """Trim a close reason to what fits in a close frame, on a UTF-8 boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return text
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


def parse_client_message(raw: str | bytes) -> tuple[str, dict[str, Any]]:
    """Split a client frame into (kind, body); kind is one of TOP_LEVEL_MESSAGES (snake_case).

    BidiGenerateContentClientMessage is a oneof: exactly one known top-level field.
    """
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid JSON payload received. {exc.msg}.") from None
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid JSON payload received. Not UTF-8.") from None
    if not isinstance(message, dict):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid JSON payload received. Expected an object.")
    kinds: list[str] = []
    for key in message:
        snake = to_snake(key)
        if snake not in TOP_LEVEL_MESSAGES:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT,
                f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.',
            )
        kinds.append(snake)
    if len(kinds) != 1:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT,
            "Invalid JSON payload received. Exactly one of setup, clientContent, realtimeInput, "
            "toolResponse must be set.",
        )
    kind = kinds[0]
    body = pick(message, kind)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid JSON payload received. '{kind}' is not an object."
        )
    return kind, body


def parse_pcm_rate(mime_type: Any, where: str) -> int:
    """Sample rate of an `audio/pcm[;rate=N]` mime type (16 kHz when the rate is omitted)."""
    if not isinstance(mime_type, str) or not mime_type.lower().startswith("audio/pcm"):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Unsupported mime type {mime_type!r} at '{where}'")
    match = re.search(r"rate\s*=\s*(\d+)", mime_type)
    if match is None:
        return DEFAULT_INPUT_RATE
    rate = int(match.group(1))
    if not 8000 <= rate <= 48000:
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Unsupported sample rate {rate} at '{where}'")
    return rate


@dataclass
class AudioIn:
    pcm: bytes
    rate: int


@dataclass
class RealtimeInput:
    """One `realtimeInput` message, decoded."""

    audio: list[AudioIn] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)  # video frames (JPEG stills), unchecked
    text: str | None = None
    activity_start: bool = False
    activity_end: bool = False
    audio_stream_end: bool = False


def _parse_blob(blob: Any, where: str, out: RealtimeInput) -> None:
    if not isinstance(blob, Mapping):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid value at '{where}', expected a Blob")
    mime = pick(blob, "mime_type", "")
    data = decode_b64(pick(blob, "data", ""), f"{where}.data")
    if isinstance(mime, str) and mime.lower().startswith(("image/", "video/")):
        if mime.lower().split(";")[0].strip() not in ("image/jpeg", "image/jpg"):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Unsupported mime type {mime!r} at '{where}'")
        out.images.append(data)
        return
    out.audio.append(AudioIn(pcm=data, rate=parse_pcm_rate(mime, f"{where}.mime_type")))


def parse_realtime_input(body: Mapping[str, Any]) -> RealtimeInput:
    unknown = canonical_keys(body) - set(REALTIME_INPUT_FIELDS)
    if unknown:
        name = sorted(unknown)[0]
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT,
            f"Invalid JSON payload received. Unknown name \"{name}\" at 'realtime_input': Cannot find field.",
        )
    out = RealtimeInput()
    chunks = pick(body, "media_chunks")
    if chunks is not None:
        if not isinstance(chunks, list):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid value at 'realtime_input.media_chunks'")
        for i, blob in enumerate(chunks):
            _parse_blob(blob, f"realtime_input.media_chunks[{i}]", out)
    audio = pick(body, "audio")
    if audio is not None:
        _parse_blob(audio, "realtime_input.audio", out)
    video = pick(body, "video")
    if video is not None:
        _parse_blob(video, "realtime_input.video", out)
    text = pick(body, "text")
    if text is not None:
        if not isinstance(text, str):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid value at 'realtime_input.text'")
        out.text = text
    out.activity_start = pick(body, "activity_start") is not None
    out.activity_end = pick(body, "activity_end") is not None
    out.audio_stream_end = bool(pick(body, "audio_stream_end", False))
    return out


def content_text(turns: Any) -> str:
    """The text parts of clientContent.turns, joined (inline audio/images are ignored)."""
    if isinstance(turns, Mapping):
        turns = [turns]
    if not isinstance(turns, list):
        return ""
    texts: list[str] = []
    for turn in turns:
        for part in pick(turn, "parts", []) or []:
            text = pick(part, "text")
            if isinstance(text, str):
                texts.append(text)
    return " ".join(texts)


def duration_string(seconds: float) -> str:
    """google.protobuf.Duration JSON form: "50s", "1.500s"."""
    seconds = max(0.0, seconds)
    if abs(seconds - round(seconds)) < 1e-6:
        return f"{round(seconds)}s"
    return f"{seconds:.3f}s"
