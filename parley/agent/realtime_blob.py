"""Realtime input blobs (the caller's audio chunks, camera frames) written to the Live socket the way the
SDK writes them, without the SDK's cost per blob.

`AsyncSession.send_realtime_input(audio=Blob)` builds a pydantic model, runs it through the SDK's
converters and base64-encodes it: about 145 µs of CPU for each 20 ms audio chunk (0.29 of a core at 40
calls), 462 µs for a 40 KB camera frame (docs/benchmarks.md, "What the server's loop still paid for at
40 calls"). The message is always the same JSON around the blob's base64, so the SDK is asked once per
field and MIME type to write a blob of known bytes, and the text around them becomes a template; a
second blob of another length must then come out of the template exactly as the SDK writes it. If it
does not (an SDK that writes blobs differently, or a field that depends on the data), every blob goes
through `send_realtime_input` as before: the SDK stays the authority on the wire format. An audio chunk
then costs 3 µs.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from typing import Any

from google.genai import live, types

logger = logging.getLogger(__name__)

# 240 bytes: every byte value the alphabet distinguishes, no padding, text found nowhere else in a message.
_PROBE = bytes(range(240))
Template = tuple[str, str, Callable[[bytes], bytes]]  # the text before the base64, after it, the encoder
_templates: dict[tuple[bool, str, str], Template | None] = {}  # (vertex, field, MIME type) -> template


class _CapturedSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


async def _sdk_message(api_client: Any, field: str, blob: bytes, mime_type: str) -> str:
    socket = _CapturedSocket()
    session = live.AsyncSession(api_client=api_client, websocket=socket)  # type: ignore[arg-type]
    blobs: dict[str, Any] = {field: types.Blob(data=blob, mime_type=mime_type)}
    await session.send_realtime_input(**blobs)
    return socket.sent[0]


async def _template(api_client: Any, field: str, mime_type: str) -> Template | None:
    probe_message = await _sdk_message(api_client, field, _PROBE, mime_type)
    check = os.urandom(641)  # another length, with padding
    check_message = await _sdk_message(api_client, field, check, mime_type)
    for encode in (base64.urlsafe_b64encode, base64.b64encode):
        probe_text = encode(_PROBE).decode("ascii")
        if probe_message.count(probe_text) != 1:
            continue
        prefix, suffix = probe_message.split(probe_text)
        if prefix + encode(check).decode("ascii") + suffix == check_message:
            return prefix, suffix, encode
    return None


class BlobSender:
    """Sends one realtime field's blobs (`audio` chunks, `video` frames) on one Live session: through the
    template where the SDK agreed to it."""

    def __init__(self, session: Any, field: str, mime_type: str, template: Template | None) -> None:
        self._session = session
        self._field = field
        self._mime_type = mime_type
        self._template = template

    @property
    def fast(self) -> bool:
        """Blobs go by the template, not through the SDK."""
        return self._template is not None

    @classmethod
    async def for_session(cls, session: Any, field: str, mime_type: str) -> BlobSender:
        api_client = getattr(session, "_api_client", None)
        if api_client is None or getattr(session, "_ws", None) is None:
            return cls(session, field, mime_type, None)
        key = (bool(getattr(api_client, "vertexai", False)), field, mime_type)
        if key not in _templates:
            try:
                _templates[key] = await _template(api_client, field, mime_type)
            except Exception:  # an SDK whose session cannot be made this way: it writes every blob
                _templates[key] = None
            if _templates[key] is None:
                logger.warning(
                    "this SDK's %s message has no fixed template: every blob goes through it", field
                )
        return cls(session, field, mime_type, _templates[key])

    async def send(self, blob: bytes) -> None:
        if self._template is None:
            await self._session.send_realtime_input(
                **{self._field: types.Blob(data=blob, mime_type=self._mime_type)}
            )
            return
        prefix, suffix, encode = self._template
        await self._session._ws.send(prefix + encode(blob).decode("ascii") + suffix)
