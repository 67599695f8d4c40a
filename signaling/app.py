"""The signaling server: WHIP-style call set-up over HTTP, the web page, and health.

POST   /v1/calls        SDP offer in (application/sdp or JSON) -> 201, Location, SDP answer
GET    /v1/calls/{id}   the call's state and counters
DELETE /v1/calls/{id}   hang up -> 204
GET    /healthz         liveness and load
GET    /v1/config       what the page needs to know (ICE servers, offline emulator mode)
GET    /                the join page (web/)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from agent.sdp import OfferError
from agent.worker import WorkerBusy

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024


class CallHost(Protocol):
    """What the signaling server needs from whoever runs the calls (an in-process worker, or a fleet)."""

    async def create_call(self, offer_sdp: str) -> tuple[str, str]: ...
    async def end_call(self, call_id: str, reason: str = "hangup") -> None: ...
    def describe_call(self, call_id: str) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


CALL_HOST = web.AppKey("call_host", CallHost)
PAGE_CONFIG = web.AppKey("page_config", dict)


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def read_offer(request: web.Request) -> tuple[str, bool]:
    """The offer's SDP, and whether the caller spoke JSON. Raises an HTTP error response otherwise."""
    content_type = request.content_type
    if content_type not in ("application/sdp", "application/json"):
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": "send the offer as application/sdp or application/json"}),
            content_type="application/json",
        )
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            raise _too_large()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body is not UTF-8"}), content_type="application/json"
        ) from None
    if content_type == "application/sdp":
        return text, False
    try:
        payload = json.loads(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body is not valid JSON"}), content_type="application/json"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("sdp"), str):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": 'expected {"sdp": "...", "type": "offer"}'}),
            content_type="application/json",
        )
    if payload.get("type", "offer") != "offer":
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "only offers are accepted"}), content_type="application/json"
        )
    return payload["sdp"], True


def _too_large() -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_OFFER_BYTES,
        actual_size=MAX_OFFER_BYTES + 1,
        text=json.dumps({"error": f"the offer is larger than {MAX_OFFER_BYTES // 1024} KiB"}),
        content_type="application/json",
    )


async def create_call(request: web.Request) -> web.Response:
    offer, as_json = await read_offer(request)
    try:
        call_id, answer = await request.app[CALL_HOST].create_call(offer)
    except OfferError as exc:
        return error(exc.status, exc.message)
    except WorkerBusy as exc:
        return error(503, f"busy: {exc.message}", **{"Retry-After": str(exc.retry_after_s)})
    location = f"/v1/calls/{call_id}"
    if as_json:
        return web.json_response(
            {"id": call_id, "sdp": answer, "type": "answer"}, status=201, headers={"Location": location}
        )
    return web.Response(
        status=201, body=answer.encode(), content_type="application/sdp", headers={"Location": location}
    )


async def get_call(request: web.Request) -> web.Response:
    try:
        return web.json_response(request.app[CALL_HOST].describe_call(request.match_info["call_id"]))
    except KeyError:
        return error(404, "no such call")


async def delete_call(request: web.Request) -> web.Response:
    try:
        await request.app[CALL_HOST].end_call(request.match_info["call_id"])
    except KeyError:
        return error(404, "no such call")
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **request.app[CALL_HOST].stats()})


async def page_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[PAGE_CONFIG])


def create_app(host: CallHost, web_root: Path | None, page_config_data: dict[str, Any]) -> web.Application:
    # aiohttp's own body limit answers 413 for any route that reads a body.
    app = web.Application(client_max_size=MAX_OFFER_BYTES)
    app[CALL_HOST] = host
    app[PAGE_CONFIG] = page_config_data
    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_delete("/v1/calls/{call_id}", delete_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/config", page_config)
    if web_root is not None and web_root.is_dir():
        index = web_root / "index.html"

        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        app.router.add_get("/", page)
        app.router.add_static("/", web_root, show_index=False)
    return app
