"""Errors as the API gives them: JSON `{"error": message}` with the right status."""

from __future__ import annotations

import json

from aiohttp import web


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def bad_request(message: str) -> web.HTTPBadRequest:
    """For a handler to raise, where returning is not possible."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
