"""The signaling server: WHIP-style call set-up over HTTP, the web page, and health.

POST   /v1/calls        SDP offer in (application/sdp or JSON) -> 201, Location, SDP answer;
                        ?agent=NAME or "agent" (JSON) picks the agent, "variables" (JSON) fill it in
GET    /v1/calls/{id}   the call's state, counters, agent (an ended call's record: signaling/records_api.py)
DELETE /v1/calls/{id}   hang up -> 204
GET    /healthz         liveness and load
GET    /v1/config       what the page needs to know (ICE servers, offline emulator mode)
GET    /                the join page (web/)
GET    /calls           the operator page: call records (web/calls.html)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from parley.agent.sdp import OfferError
from parley.agent.worker import CallNotFound, UnknownAgent, WorkerBusy
from parley.profiles import AdmissionError, ProfileStore
from parley.signaling.access import JOIN_CLAIMS
from parley.signaling.agents import PROFILES, admit_call, agent_config, cross_origin, origins_in_force
from parley.signaling.errors import bad_request, error
from parley.signaling.records_api import (
    CallRecords,
    add_record_routes,
    add_records_off_routes,
    recorded_call,
)

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024


class CallHost(Protocol):
    """What the signaling server needs from whoever runs the calls (an in-process worker, or a fleet)."""

    async def create_call(
        self,
        offer_sdp: str,
        max_seconds: float | None = None,
        agent: str | None = None,
        variables: Mapping[str, str] | None = None,
        caller: Mapping[str, str] | None = None,
    ) -> tuple[str, str]: ...
    async def resume_call(self, call_id: str, offer_sdp: str) -> str: ...
    async def end_call(self, call_id: str, reason: str = "hangup") -> None: ...
    async def describe_call(self, call_id: str) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


class WorkerTimeout(Exception):
    """The worker holding a call did not answer in time (a fleet's worker, through Redis)."""


PageConfig = Callable[[], dict[str, Any]]
CALL_HOST = web.AppKey("call_host", CallHost)
PAGE_CONFIG: web.AppKey[PageConfig] = web.AppKey("page_config")
KEEP_CLIENT_ADDRESS = web.AppKey("keep_client_address", bool)  # PARLEY_RECORD_CLIENT_ADDRESS


@dataclass
class Offer:
    sdp: str
    as_json: bool  # the caller spoke JSON, and is answered in JSON
    resume: str | None = None  # the call it rejoins
    agent: str | None = None  # None: the default agent (or the join token's)
    variables: dict[str, object] = field(default_factory=dict)


async def read_offer(request: web.Request) -> Offer:
    """The offer, from an SDP or a JSON body; raises an HTTP error response otherwise."""
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
        raise bad_request("the body is not UTF-8") from None
    if content_type == "application/sdp":
        return Offer(text, False, request.query.get("resume"), request.query.get("agent"))
    try:
        payload = json.loads(text)
    except ValueError:
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("sdp"), str):
        raise bad_request('expected {"sdp": "...", "type": "offer"}')
    if payload.get("type", "offer") != "offer":
        raise bad_request("only offers are accepted")
    resume = payload.get("resume", request.query.get("resume"))
    if resume is not None and not isinstance(resume, str):
        raise bad_request("resume must be a call id")
    agent = payload.get("agent", request.query.get("agent"))
    if agent is not None and not isinstance(agent, str):
        raise bad_request("agent must be an agent's name")
    variables = payload.get("variables", {})
    if not isinstance(variables, dict):
        raise bad_request("variables must be an object of names and strings")
    return Offer(payload["sdp"], True, resume, agent, variables)


def _too_large() -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_OFFER_BYTES,
        actual_size=MAX_OFFER_BYTES + 1,
        text=json.dumps({"error": f"the offer is larger than {MAX_OFFER_BYTES // 1024} KiB"}),
        content_type="application/json",
    )


async def create_call(request: web.Request) -> web.Response:
    offer = await read_offer(request)
    agent: str | None = None
    try:
        if offer.resume is not None:
            call_id = offer.resume
            answer = await request.app[CALL_HOST].resume_call(offer.resume, offer.sdp)
        else:
            claims = request.get(JOIN_CLAIMS)
            max_seconds = claims.max_seconds if claims is not None else None
            admitted = admit_call(request, offer.agent, offer.variables, claims)
            agent = admitted.agent
            call_id, answer = await request.app[CALL_HOST].create_call(
                offer.sdp,
                max_seconds=max_seconds,
                agent=agent,
                variables=admitted.variables,
                caller=caller_facts(request),
            )
    except AdmissionError as exc:
        return error(exc.status, exc.message)
    except UnknownAgent as exc:
        return error(404, f"no agent named {exc.args[0]!r}")
    except KeyError:
        return error(404, "no such call")
    except OfferError as exc:
        return error(exc.status, exc.message)
    except WorkerBusy as exc:
        return error(503, f"busy: {exc.message}", **{"Retry-After": str(exc.retry_after_s)})
    location = f"/v1/calls/{call_id}"
    if offer.as_json:
        reply = {"id": call_id, "sdp": answer, "type": "answer", **({"agent": agent} if agent else {})}
        return web.json_response(reply, status=201, headers={"Location": location})
    return web.Response(
        status=201, body=answer.encode(), content_type="application/sdp", headers={"Location": location}
    )


def caller_facts(request: web.Request) -> dict[str, str]:
    """What the call's record and webhooks keep of its caller: the page's origin (none from a
    non-browser client), and the client's address only with PARLEY_RECORD_CLIENT_ADDRESS=true."""
    facts = {"origin": request.headers.get("Origin") or ""}
    if request.app[KEEP_CLIENT_ADDRESS]:
        facts["client_address"] = request.remote or ""
    return {key: value for key, value in facts.items() if value}


async def get_call(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    try:
        return web.json_response(await request.app[CALL_HOST].describe_call(call_id))
    except CallNotFound:
        return await recorded_call(request, call_id)  # ended: its record, if records are kept
    except Exception as exc:
        return call_error(exc)


async def delete_call(request: web.Request) -> web.Response:
    try:
        await request.app[CALL_HOST].end_call(request.match_info["call_id"])
    except Exception as exc:
        return call_error(exc)
    return web.Response(status=204)


def call_error(exc: Exception) -> web.Response:
    """What a call host's failure to reach a call looks like to the caller; anything else is re-raised."""
    if isinstance(exc, CallNotFound):
        return error(404, "no such call")
    if isinstance(exc, WorkerBusy):  # a fleet whose registry (Redis) is down
        return error(503, exc.message, **{"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, WorkerTimeout):
        return error(504, str(exc))
    raise exc


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **request.app[CALL_HOST].stats()})


async def page_config(request: web.Request) -> web.Response:
    # Made per request: TURN credentials are minted for each page, a fleet's facts change.
    config = request.app[PAGE_CONFIG]()
    try:  # ?agent=NAME: the page learns at once whether its agent exists, its model, if it takes video
        agent = agent_config(request, request.query.get("agent"))
    except AdmissionError as exc:
        return error(exc.status, exc.message)
    # video.enabled false: the page offers no video m-line (so never asks for a camera) and no toggles.
    config["video"] = {**config.get("video", {}), "enabled": agent.pop("takesVideo")}
    config.update(agent)
    return web.json_response(config, headers={"Cache-Control": "no-store"})


CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Max-Age": "600",
}


def origin_guard(allowed_origins: Callable[[], set[str]]) -> Any:
    """The API (/v1/...) from a browser: its own origin always, other origins only when allowed ("*": any).

    An allowed origin gets CORS headers and its preflights (OPTIONS) answered; any other origin gets 403
    with a JSON error, itself readable from that origin so an embedded widget can say why. Same origin is
    judged on host and port only (a TLS-terminating proxy makes the scheme differ). Scripts (widget.js
    and the module it imports) are public: a module script is always fetched with CORS. The origins are
    the server's and every agent's (`allowed_origins`), read per request: a reload changes them."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not request.path.startswith("/v1/"):
            response = await handler(request)
            if origin is not None and request.path.endswith(".js"):
                response.headers["Access-Control-Allow-Origin"] = "*"
            return response
        if cross_origin(request) is None:
            return await handler(request)
        assert origin is not None
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        allowed = allowed_origins()
        if origin.lower() not in allowed and "*" not in allowed:
            message = f"{origin} is not an allowed origin for this server (PARLEY_ALLOWED_ORIGINS)"
            return error(403, message, **cors)
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={**cors, **CORS_HEADERS})
        cors["Access-Control-Expose-Headers"] = "Location, Retry-After"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(cors)
            raise
        response.headers.update(cors)
        return response

    return guard


def add_metrics_route(app: web.Application, render: Callable[[], tuple[bytes, str]]) -> None:
    """GET /metrics: the Prometheus text exposition `render` makes (agent/metrics.py)."""

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)


def create_app(
    host: CallHost,
    web_root: Path | None,
    page_config_source: PageConfig,
    allowed_origins: list[str] | None = None,
    admission: Middleware | None = None,
    records: CallRecords | None = None,
    admin_token: str | None = None,
    profiles: ProfileStore | None = None,
    record_client_address: bool = False,
) -> web.Application:
    """`profiles`: the agents calls may choose from; None, the one agent `default`.
    `record_client_address`: the calls' records and webhooks keep the client's address."""
    store = profiles or ProfileStore.open(None)
    # aiohttp's own body limit answers 413 for any route that reads a body.
    middlewares = [origin_guard(origins_in_force(allowed_origins or [], store))]
    if admission is not None:
        middlewares.append(admission)
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=middlewares)
    app[CALL_HOST] = host
    app[PROFILES] = (store, list(allowed_origins or []))
    app[PAGE_CONFIG] = page_config_source
    app[KEEP_CLIENT_ADDRESS] = record_client_address
    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_delete("/v1/calls/{call_id}", delete_call)
    if records is not None:
        add_record_routes(app, records, admin_token)
    else:
        add_records_off_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/config", page_config)
    if web_root is not None and web_root.is_dir():
        index = web_root / "index.html"

        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        async def calls_page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(web_root / "calls.html")  # the operator page (its API needs the token)

        app.router.add_get("/", page)
        app.router.add_get("/calls", calls_page)
        app.router.add_static("/", web_root, show_index=False)
    return app
