"""Reading call records over HTTP, for operators.

GET /v1/calls                  a page of calls, newest first (agent, since, until, reason, limit, cursor)
GET /v1/calls/{id}             a live call as today; an ended one from its record
GET /v1/calls/{id}/transcript  both sides' utterances, tool calls and results, grounding; the timeline
GET /v1/calls/{id}/recording   the call's stereo Ogg/Opus recording, if it was recorded

Records need the operator token (`Authorization: Bearer <PARLEY_ADMIN_TOKEN>`); with no token set they
are served to loopback clients only. A caller still reads its own live call without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from parley.signaling.errors import bad_request, error


class CallRecords(Protocol):
    """What the API needs of the records (parley/records/service.py); the database stays behind it."""

    async def describe(self, call_id: str) -> dict[str, Any] | None: ...
    async def transcript(self, call_id: str) -> dict[str, Any] | None: ...
    async def recording(self, call_id: str) -> Path | None: ...
    async def list_calls(self, **filters: Any) -> dict[str, Any]:
        """`filters`: agent, reason, since, until (Unix seconds), limit, cursor (ValueError: a bad one)."""


RECORDS = web.AppKey("records", CallRecords)
ADMIN_TOKEN = web.AppKey("admin_token", str)


def operator_refusal(request: web.Request) -> web.Response | None:
    """None when the request may read records, else the error to answer with."""
    token = request.app.get(ADMIN_TOKEN) or ""
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return None
        return error(401, "call records need the operator token", **{"WWW-Authenticate": "Bearer"})
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return error(403, "call records are served on loopback only until PARLEY_ADMIN_TOKEN is set")


async def recorded_call(request: web.Request, call_id: str) -> web.Response:
    """GET /v1/calls/{id} for a call no worker holds: its record, for an operator; else 404."""
    records = request.app.get(RECORDS)
    if records is None:
        return error(404, "no such call")
    refusal = operator_refusal(request)
    if refusal is not None:
        return refusal
    record = await _read(records.describe(call_id))
    if record is None:
        return error(404, "no such call")
    return web.json_response(record)


async def _read(awaitable: Any, bad_value: str | None = None) -> Any:
    try:
        return await awaitable
    except ValueError as exc:
        if bad_value is None:
            raise _unavailable() from exc
        raise bad_request(bad_value) from None
    except Exception as exc:
        raise _unavailable() from exc


def _unavailable() -> web.HTTPException:
    return web.HTTPServiceUnavailable(
        text='{"error": "the call records database is unavailable"}',
        content_type="application/json",
        headers={"Retry-After": "5"},
    )


def _time(name: str, raw: str | None) -> float | None:
    """A query time: Unix seconds or ISO 8601 (a time without a zone is UTC)."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name} must be Unix seconds or an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_filter(query: Any) -> dict[str, Any]:
    raw_limit = query.get("limit", "50")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise bad_request("limit must be a whole number") from None
    if not 1 <= limit <= 200:
        raise bad_request("limit must be between 1 and 200")
    return {
        "agent": query.get("agent") or None,
        "reason": query.get("reason") or None,
        "since": _time("since", query.get("since")),
        "until": _time("until", query.get("until")),
        "limit": limit,
        "cursor": query.get("cursor") or None,
    }


async def list_calls(request: web.Request) -> web.Response:
    refusal = operator_refusal(request)
    if refusal is not None:
        return refusal
    filters = parse_filter(request.query)
    page = await _read(request.app[RECORDS].list_calls(**filters), "cursor is not one this server gave out")
    return web.json_response(page)


async def call_transcript(request: web.Request) -> web.Response:
    refusal = operator_refusal(request)
    if refusal is not None:
        return refusal
    transcript = await _read(request.app[RECORDS].transcript(request.match_info["call_id"]))
    if transcript is None:
        return error(404, "no such call")
    return web.json_response(transcript)


async def call_recording(request: web.Request) -> web.StreamResponse:
    refusal = operator_refusal(request)
    if refusal is not None:
        return refusal
    path = await _read(request.app[RECORDS].recording(request.match_info["call_id"]))
    if path is None:
        return error(404, "this call has no recording")
    return web.FileResponse(path, headers={"Content-Type": "audio/ogg", "Cache-Control": "no-store"})


async def records_off(request: web.Request) -> web.Response:
    return error(404, "call records are off on this server (PARLEY_DATABASE_URL=none)")


def add_records_off_routes(app: web.Application) -> None:
    """The read paths answer a JSON error saying why, not a bare 404, when records are off."""
    for path in ("/v1/calls", "/v1/calls/{call_id}/transcript", "/v1/calls/{call_id}/recording"):
        app.router.add_get(path, records_off)


def add_record_routes(app: web.Application, records: CallRecords, admin_token: str | None) -> None:
    app[RECORDS] = records
    app[ADMIN_TOKEN] = admin_token or ""
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/{call_id}/transcript", call_transcript)
    app.router.add_get("/v1/calls/{call_id}/recording", call_recording)
