"""A worker's health port: GET /healthz (alive), /readyz (registered and taking calls), /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from parley.fleet.gauges import gauge_registry
from parley.fleet.rpc_server import FleetWorker


def health_app(
    fleet: FleetWorker, calls_metrics: Callable[[], tuple[bytes, str]] | None = None
) -> web.Application:
    """The worker's endpoints; `calls_metrics` renders the calls' own metrics, as `parley serve` has them."""
    registry = gauge_registry(fleet.gauges, {"worker": fleet.id})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "worker": fleet.id, "state": fleet.state, "redis": fleet.redis_ok}
            | fleet.worker.stats()
        )

    async def readyz(request: web.Request) -> web.Response:
        fresh = fleet.last_beat_at is not None and (
            time.monotonic() - fleet.last_beat_at < fleet.options.worker_ttl_s
        )
        ready = fleet.state == "ready" and fresh
        return web.json_response(
            {"ready": ready, "state": fleet.state, "redis": fleet.redis_ok}, status=200 if ready else 503
        )

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
        if calls_metrics is not None:
            calls_body, content_type = calls_metrics()
            body = calls_body + body
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
