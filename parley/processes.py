"""Process start-up and lifecycle for the long-running commands: signals, drain, cleanup.

Every long-running command waits in `until_signalled`: SIGINT ends at once; SIGTERM drains when the
command can (no new calls, the current ones may finish), and a second signal while draining ends the
calls now. Cleanup runs in every case. SIGHUP re-reads the agents file (`reload_on_sighup`).

`parley worker` and `parley signaling` are put together here from the settings: the fleet room
(parley/fleet) and the HTTP API (parley/signaling) only see their own option objects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from parley.agent.tools import ToolRegistry
from parley.agent.turn_credentials import ice_server_source
from parley.agent.warmup import warm_up
from parley.fleet.health import health_app
from parley.fleet.host import RedisCallHost
from parley.fleet.monitor import default_worker_id
from parley.fleet.options import FleetOptions
from parley.fleet.rpc_server import FleetWorker
from parley.fleet.wire import SIGNALING_TTL_S
from parley.profiles import ProfileStore
from parley.records.service import Records
from parley.records.webhooks import WebhookSender
from parley.settings import Settings
from parley.signaling.access import refuse_public_without_secret
from parley.signaling.records_api import CallRecords

logger = logging.getLogger("parley")

# `parley worker` takes this many calls when PARLEY_MAX_CALLS is 0 (aiortc lags past ~10-15 a process).
DEFAULT_WORKER_CALLS = 12


def freeze_heap() -> None:
    """Once started: put everything alive now (modules, the SDK's pydantic models, codecs; about a
    million objects) out of the cyclic garbage collector's reach. Each full collection walked them all
    with the event loop stopped: 150-300 ms, several times a minute under load (docs/benchmarks.md),
    a stall in every call of the process. Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


async def until_signalled(
    cleanup: Callable[[], Awaitable[None]],
    drain: Callable[[], Coroutine[Any, Any, None]] | None = None,
    end_now: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Wait for SIGINT or SIGTERM, then clean up; returns the first signal's number.

    With `drain`, SIGTERM runs it to its end; a signal that comes meanwhile runs `end_now` (which should
    make the drain finish soon). SIGINT, or SIGTERM without `drain`, goes straight to cleanup."""
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        if signals[0] == signal.SIGTERM and drain is not None:
            draining = asyncio.create_task(drain())
            while not draining.done():
                stop.clear()
                again = asyncio.create_task(stop.wait())
                await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
                again.cancel()
                if stop.is_set() and end_now is not None:
                    await end_now()
            await draining
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
        await cleanup()
    return signals[0]


def reload_on_sighup(profiles: ProfileStore) -> None:
    """SIGHUP re-reads the agents file: new calls get the new profiles, calls in progress keep theirs,
    and a file that does not validate is refused with a log line (the old profiles stay)."""
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, profiles.reload)


def fleet_options(settings: Settings) -> FleetOptions:
    if not settings.redis_url:
        raise ValueError("a Redis URL is needed")
    return FleetOptions(
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        heartbeat_s=settings.heartbeat_s,
        worker_ttl_s=settings.worker_ttl_s,
        dispatch_timeout_s=settings.dispatch_timeout_s,
        worker_max_lag_ms=settings.worker_max_lag_ms,
        worker_max_cpu=settings.worker_max_cpu,
    )


# --- parley emulator ----------------------------------------------------------------------------


def run_emulator_command(args: argparse.Namespace) -> None:
    from parley.emulator import cli as emulator_cli

    emulator = emulator_cli.build(args)

    async def serve_emulator() -> None:
        await emulator_cli.start(emulator)
        freeze_heap()
        await until_signalled(lambda: emulator_cli.stop(emulator))

    asyncio.run(serve_emulator())


# --- parley serve -------------------------------------------------------------------------------


async def serve(settings: Settings, tools: ToolRegistry | None = None) -> None:
    from parley.server import start

    running = await start(settings, tools)
    if running.profiles is not None:
        reload_on_sighup(running.profiles)
    freeze_heap()

    async def cleanup() -> None:
        logger.warning("shutting down: ending %d calls", len(running.worker.calls))
        await running.stop()

    await until_signalled(cleanup)


# --- parley worker ------------------------------------------------------------------------------


def run_worker_command(args: argparse.Namespace) -> None:
    from parley.agent.tools import default_registry, load_tool_module

    settings = Settings.from_env()
    settings.redis_url = args.redis or settings.redis_url
    if not settings.redis_url:
        raise SystemExit("parley worker needs --redis URL (or PARLEY_REDIS_URL)")
    if args.max_calls is not None:
        settings.max_calls = args.max_calls
    if args.backend:
        settings.backend = args.backend
    if args.health_port is not None:
        settings.worker_health_port = args.health_port
    settings.agents_file = args.agents or settings.agents_file
    if args.agents_only:
        settings.agents_only = [name.strip() for name in args.agents_only.split(",") if name.strip()]
    for module in args.tools or []:
        load_tool_module(module)
    raise SystemExit(asyncio.run(run_worker(settings, default_registry, args.id)))


async def run_worker(
    settings: Settings, tools: ToolRegistry | None = None, worker_id: str | None = None
) -> int:
    """Run one worker process until SIGTERM (drain) or SIGINT (end calls now). Returns the exit status."""
    from parley.server import build_agent

    worker_id = worker_id or settings.worker_id or default_worker_id()
    agent = await build_agent(
        settings, tools, max_calls=settings.max_calls or DEFAULT_WORKER_CALLS, worker_name=worker_id
    )
    worker, metrics = agent.worker, agent.metrics
    unknown = [name for name in settings.agents_only or [] if name not in agent.profiles.catalog]
    if unknown:
        raise SystemExit(f"--agents-only names agents the agents file does not have: {', '.join(unknown)}")
    reload_on_sighup(agent.profiles)
    if settings.turn_secret:
        worker.ice_server_source = ice_server_source(
            settings.ice_servers, settings.turn_urls, settings.turn_secret, settings.turn_ttl_s, worker_id
        )
    logger.warning("worker %s warmed up in %.2f s", worker_id, await warm_up())
    freeze_heap()
    fleet = FleetWorker(worker, fleet_options(settings), worker_id, agent.backend, settings.agents_only)
    metrics.start()
    runner: web.AppRunner | None = None
    if settings.worker_health_port:
        runner = web.AppRunner(health_app(fleet, metrics.render), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.worker_health_host, settings.worker_health_port).start()

    async def end_now() -> None:
        logger.warning("second signal: ending %d calls now", len(worker.calls))
        await worker.close()

    async def cleanup() -> None:
        await fleet.stop()
        if runner is not None:
            await runner.cleanup()
        await agent.stop()

    await fleet.start()
    await until_signalled(cleanup, lambda: fleet.drain(settings.drain_timeout_s), end_now)
    return 0


# --- parley signaling ---------------------------------------------------------------------------


def create_fleet_app(
    settings: Settings, host: RedisCallHost, profiles: ProfileStore, records: CallRecords | None = None
) -> web.Application:
    from parley.front_door import front_door

    # The same front door as `parley serve`. (Token `uses` are counted by each signaling process.)
    app = front_door(
        settings, host, profiles, records, lambda: any(w.backend == "emulator" for w in host.workers.values())
    )

    async def readyz(request: web.Request) -> web.Response:
        ready = host.redis_ok
        return web.json_response({"ready": ready, "redis": host.redis_ok}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=host.metrics(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@dataclass
class RunningSignaling:
    runner: web.AppRunner
    host: RedisCallHost
    port: int
    profiles: ProfileStore
    records: Records | None = None
    webhooks: WebhookSender | None = None
    orphans: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.orphans is not None:
            self.orphans.cancel()
        await self.host.close()
        if self.webhooks is not None:  # first: what it could not deliver goes to the outbox
            await self.webhooks.stop()
        if self.records is not None:
            await self.records.stop()


async def start_signaling(settings: Settings) -> RunningSignaling:
    from parley.agent_plans import open_profiles
    from parley.server import open_records, start_webhooks, webhooks_for_the_lost

    # The agents' names, origins and variables are checked here; the tools are the workers' to check.
    profiles = open_profiles(settings)
    host = RedisCallHost(fleet_options(settings))
    await host.start()
    records = await open_records(settings)
    webhooks = None
    if records is not None:
        host.on_worker_gone = records.end_calls_of_soon  # a worker that died cannot end its calls' records
        webhooks = start_webhooks(settings, host.registry)  # ... nor send their call.ended
        # ... nor the webhooks it had not delivered: this process takes them over, under its own name
        await webhooks_for_the_lost(webhooks, records, host.name)
    # On shutdown, requests in flight get as long as a dispatch may take.
    app = create_fleet_app(settings, host, profiles, records)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.dispatch_timeout_s + 1)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = int(runner.addresses[0][1]) if runner.addresses else settings.port
    logger.warning("parley signaling on http://%s:%d (Redis %s)", settings.host, port, _safe_url(settings))
    if settings.join_secret is None:
        logger.warning("no PARLEY_JOIN_SECRET: anyone who can reach this server can start calls")
    orphans = None
    if webhooks is not None:
        orphans = asyncio.create_task(send_what_gone_signaling_owed(host, webhooks), name="orphans")
    return RunningSignaling(runner, host, port, profiles, records, webhooks, orphans)


async def send_what_gone_signaling_owed(host: RedisCallHost, webhooks: WebhookSender) -> None:
    """The webhooks another `parley signaling` left in the outbox (stopped while the receiver was down,
    or killed: its own, and those it took over from lost workers) are this one's to send once that
    process is gone, i.e. absent from Redis at two looks in a row (a Redis that lost its data has
    everyone back within a heartbeat). Nothing is taken while Redis or the database cannot say."""
    assert webhooks.outbox is not None
    suspects: set[str] = set()
    while True:
        try:
            others = await webhooks.outbox.owners("signaling-") - {host.name}
            gone = others - await host.live_signaling(others)
            for owner in gone & suspects:
                await webhooks.adopt(owner)  # a database error here must not end the sweep for good
            suspects = gone
        except Exception as exc:
            logger.debug("could not look for webhooks a gone signaling process owed: %s", exc)
        await asyncio.sleep(SIGNALING_TTL_S / 2)


def _safe_url(settings: Settings) -> str:
    """The Redis URL without a password."""
    url = settings.redis_url or ""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def run_signaling_command(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    settings.redis_url = args.redis or settings.redis_url
    if not settings.redis_url:
        raise SystemExit("parley signaling needs --redis URL (or PARLEY_REDIS_URL)")
    settings.host = args.host or settings.host
    settings.port = args.port if args.port is not None else settings.port
    settings.agents_file = args.agents or settings.agents_file
    refuse_public_without_secret(settings.host, settings.join_secret, args.allow_unauthenticated)
    asyncio.run(serve_signaling(settings))


async def serve_signaling(settings: Settings) -> None:
    running = await start_signaling(settings)
    freeze_heap()
    reload_on_sighup(running.profiles)
    await until_signalled(running.stop)


# --- parley db ----------------------------------------------------------------------------------


def run_db_command(args: argparse.Namespace) -> None:
    from parley.records.database import DatabaseUrlError, make_engine, safe_url, upgrade

    settings = Settings.from_env()
    url = args.database_url or settings.database_url
    if not url:
        raise SystemExit("no database: set PARLEY_DATABASE_URL (or pass --database-url)")

    async def migrate() -> str | None:
        engine = make_engine(url)
        try:
            return await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(migrate())
    except DatabaseUrlError as exc:
        raise SystemExit(str(exc)) from None
    except Exception as exc:
        raise SystemExit(f"could not migrate {safe_url(url)}: {type(exc).__name__}: {exc}") from None
    print(f"{safe_url(url)}: schema at revision {revision}")
