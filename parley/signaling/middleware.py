"""Middlewares layered on `signaling.app.create_app` without changing its routes.

- `fresh_page_config`: `GET /v1/config` built per request (freshly minted TURN credentials, live fleet
  facts) instead of the app's fixed dict.
- `remote_calls`: `GET` and `DELETE /v1/calls/{id}` answered by an asynchronous lookup (the worker that
  holds the call, through Redis) with the fleet's own errors (503 while Redis is down, 504 when the
  worker does not answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from parley.agent.turn import ice_server_source
from parley.agent.worker import CallNotFound, WorkerBusy

if TYPE_CHECKING:
    from parley.agent.worker import Worker
    from parley.settings import Settings

CALL_ROUTE = "/v1/calls/{call_id}"


class WorkerTimeout(Exception):
    """The worker holding a call did not answer in time."""


class RemoteCalls(Protocol):
    async def fetch_call(self, call_id: str) -> dict[str, Any]: ...
    async def hang_up(self, call_id: str, reason: str = "hangup") -> None: ...


def fresh_page_config(make: Callable[[], dict[str, Any]]) -> Middleware:
    @web.middleware
    async def page_config(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/config":
            return web.json_response(make(), headers={"Cache-Control": "no-store"})
        return await handler(request)

    return page_config


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def remote_calls(host: RemoteCalls) -> Middleware:
    @web.middleware
    async def calls(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        if route is None or route.canonical != CALL_ROUTE or request.method not in ("GET", "DELETE"):
            return await handler(request)
        call_id = request.match_info["call_id"]
        try:
            if request.method == "GET":
                return web.json_response(await host.fetch_call(call_id))
            await host.hang_up(call_id)
            return web.Response(status=204)
        except CallNotFound:
            return _error(404, "no such call")
        except WorkerBusy as exc:
            return _error(503, exc.message, **{"Retry-After": str(exc.retry_after_s)})
        except WorkerTimeout as exc:
            return _error(504, str(exc))

    return calls


def use_turn(settings: Settings, app: web.Application, worker: Worker, page_config: dict[str, Any]) -> None:
    """With PARLEY_TURN_SECRET set: fresh TURN credentials for each page and for each of `worker`'s calls."""
    if not (settings.turn_secret and settings.turn_urls):
        return
    args = (settings.ice_servers, settings.turn_urls, settings.turn_secret, settings.turn_ttl_s)
    worker.ice_server_source = ice_server_source(*args, "worker")
    page_ice = ice_server_source(*args, "web")
    app.middlewares.append(fresh_page_config(lambda: {**page_config, "iceServers": page_ice()}))
