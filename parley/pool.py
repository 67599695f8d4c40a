"""`parley serve --processes N`: the front door in this process, the calls in N media processes.

One event loop carries about 10-15 calls before its lag grows past what a call notices
(docs/benchmarks.md, "Where a 40-call core goes"); a machine's other cores need processes of their own.
This process keeps what is shared (HTTP and the page, admission, the agents, the call records API, the
embedded emulator) and starts N children (`parley media-process`, not for use by hand), each a worker
on its own core that the front door reaches over a Unix socket (parley/fleet/local.py). Media flows
between each caller and its child directly. Without Redis: for many machines, `parley signaling` and
`parley worker` (README "Scale-out").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from parley.agent.metrics import Metrics
from parley.agent.tools import ToolRegistry
from parley.agent.turn_credentials import ice_server_source
from parley.agent.warmup import warm_up
from parley.agent_plans import open_profiles
from parley.emulator.server import GeminiEmulator
from parley.fleet.local import MediaProcesses, media_process_app, report_endings
from parley.front_door import front_door
from parley.processes import freeze_heap, reload_on_sighup, until_signalled
from parley.server import EmulatorAddress, build_agent, open_records, start_webhooks, webhooks_for_the_lost
from parley.settings import Settings

logger = logging.getLogger("parley")


def process_count(requested: int) -> int:
    """0: one per core this process may run on."""
    if requested < 0:
        raise SystemExit(f"--processes (PARLEY_PROCESSES) must be 0 (one per core) or more, got {requested}")
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


async def serve_pool(settings: Settings, tools: ToolRegistry, child_args: list[str]) -> None:
    """`child_args`: what each child's command line carries of this one (log level, backend, agents
    file, tool modules)."""
    count = process_count(settings.processes)
    backend = settings.resolved_backend()
    emulator: GeminiEmulator | None = None
    if backend == "emulator":  # one emulator for all the children: the front door's
        emulator = GeminiEmulator()
        await emulator.start()
        logger.warning("no GEMINI_API_KEY set: the offline Gemini Live emulator at %s", emulator.base_url)
    profiles = open_profiles(settings, tools)  # the front door checks agents, origins and variables
    records = await open_records(settings)
    socket_dir = Path(tempfile.mkdtemp(prefix="parley-media-"))

    def command(index: int, socket_path: str, endings_fd: int) -> list[str]:
        argv = [sys.executable, "-m", "parley.cli", *child_args[:2], "media-process"]
        argv += ["--index", str(index), "--socket", socket_path, "--endings-fd", str(endings_fd)]
        argv += child_args[2:]
        if emulator is not None:
            argv += ["--emulator-url", emulator.base_url, "--emulator-ca", emulator.ca_file]
        return argv

    host = MediaProcesses(command, count, socket_dir, rpc_timeout_s=settings.dispatch_timeout_s)
    metrics = Metrics()  # the front door's own event loop
    webhooks = None
    if records is not None:
        webhooks = start_webhooks(settings, metrics.registry)
        await webhooks_for_the_lost(webhooks, records, "serve")
        host.on_process_lost = records.end_calls_of_soon  # a child that died can end nothing itself
    await host.start()
    offline = emulator is not None
    app = front_door(settings, host, profiles, records, lambda: offline)

    async def all_metrics(request: web.Request) -> web.Response:
        body = await host.metrics(metrics.render()[0])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app.router.add_get("/metrics", all_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    metrics.start()
    port = int(runner.addresses[0][1]) if runner.addresses else settings.port
    logger.warning(
        "parley listening on http://%s:%d (backend: %s, model %s, %d media processes)",
        settings.host,
        port,
        backend,
        settings.model,
        count,
    )
    if settings.join_secret is None:
        logger.warning(
            "no PARLEY_JOIN_SECRET: anyone who can reach http://%s:%d can start calls", settings.host, port
        )
    freeze_heap()
    with contextlib.suppress(NotImplementedError):

        def reload() -> None:
            profiles.reload()
            host.signal_children(signal.SIGHUP)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    async def cleanup() -> None:
        logger.warning("shutting down: ending %d calls", host.stats()["active_calls"])
        host.stopping = True  # Ctrl-C reaches the children too: their exits are not to be restarted
        await runner.cleanup()
        await host.close(signal.SIGINT)
        await metrics.stop()
        if webhooks is not None:  # first: what it could not deliver goes to the outbox
            await webhooks.stop()
        if records is not None:
            await records.stop()
        if emulator is not None:
            await emulator.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)

    await until_signalled(cleanup)


# --- a child: `parley media-process` ---------------------------------------------------------------


def run_media_process_command(args: argparse.Namespace) -> None:
    from parley.agent.tools import default_registry, load_tool_module

    settings = Settings.from_env()
    if args.backend:
        settings.backend = args.backend
    settings.agents_file = args.agents or settings.agents_file
    for module in args.tools or []:
        load_tool_module(module)
    emulator = EmulatorAddress(args.emulator_url, args.emulator_ca) if args.emulator_url else None
    endings_fd = args.endings_fd
    asyncio.run(run_media_process(settings, default_registry, args.index, args.socket, emulator, endings_fd))


async def run_media_process(
    settings: Settings,
    tools: ToolRegistry,
    index: int,
    socket_path: str,
    emulator: EmulatorAddress | None,
    endings_fd: int | None = None,
) -> None:
    """One media process until its parent ends it (SIGINT: its calls end now; SIGTERM: they may finish)."""
    agent = await build_agent(settings, tools, emulator, worker_name=f"serve-{index}")
    worker = agent.worker
    if endings_fd is not None:
        report_endings(worker, endings_fd)
    if settings.turn_secret and settings.turn_urls:  # fresh TURN credentials for each call
        turn = (settings.turn_urls, settings.turn_secret, settings.turn_ttl_s)
        worker.ice_server_source = ice_server_source(settings.ice_servers, *turn, f"serve-{index}")
    await warm_up(sdk=agent.backend != "loopback")
    runner = web.AppRunner(media_process_app(worker, agent.metrics.render), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    os.chmod(socket_path, 0o600)  # the parent's user only: it is the door to the calls
    agent.metrics.start()
    reload_on_sighup(agent.profiles)
    freeze_heap()

    async def cleanup() -> None:
        await worker.close()
        await runner.cleanup()
        await agent.stop()

    await until_signalled(cleanup, lambda: worker.drain(settings.drain_timeout_s), worker.close)
