"""`parley serve`: signaling, the web page and one agent worker in one process.

With no Gemini key in the environment, the bundled Gemini Live emulator starts in-process and the SDK
is pointed at it, so the whole pipeline can be tried offline (you hear your own words back).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google import genai
from google.genai import types
from prometheus_client import CollectorRegistry

from parley.agent.call import CallOptions
from parley.agent.credentials import FreshCredentials
from parley.agent.gemini import gemini_sessions
from parley.agent.gemini_setup import refused_setting
from parley.agent.ice import offer_host_addresses
from parley.agent.live_config import SessionConfig
from parley.agent.loopback import loopback_sessions
from parley.agent.metrics import Metrics
from parley.agent.observer import CallObserver, Observers
from parley.agent.session import SessionFactory
from parley.agent.tools import ToolRegistry
from parley.agent.turn_credentials import ice_server_source
from parley.agent.video import VideoOptions
from parley.agent.warmup import warm_up
from parley.agent.worker import Worker
from parley.agent_plans import call_planner, open_profiles
from parley.emulator.server import GeminiEmulator
from parley.front_door import front_door
from parley.profiles import ProfileStore
from parley.records.recorder import CallRecorder
from parley.records.recording import Recordings
from parley.records.service import Records, RecordsOptions
from parley.records.webhooks import WebhookMetrics, WebhookSender
from parley.records.writer import WriterMetrics
from parley.settings import GEMINI_ENV_KEYS, Settings
from parley.signaling.app import add_metrics_route
from parley.tracing import traces_wanted

if TYPE_CHECKING:
    from parley.tracing.call_traces import CallTracer

logger = logging.getLogger("parley")


@dataclass
class EmulatorAddress:
    """An emulator another process runs: the front door's, for `parley serve --processes`' children."""

    base_url: str
    ca_file: str

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def make_client(
    settings: Settings,
    emulator: GeminiEmulator | EmulatorAddress | None,
    credentials: FreshCredentials | None = None,
) -> genai.Client:
    """A google-genai client: the SDK's own environment for Gemini, or the in-process emulator."""
    ws_args: dict[str, Any] = {
        "ping_interval": settings.gemini_ping_interval_s,
        "ping_timeout": settings.gemini_ping_timeout_s or None,
    }
    if emulator is not None:
        return genai.Client(
            api_key="parley-emulator",
            http_options=types.HttpOptions(
                base_url=emulator.base_url,
                api_version=settings.gemini_api_version,
                async_client_args={"ssl": emulator.client_ssl_context(), **ws_args},
            ),
        )
    # The key, GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE and the Vertex AI variables are read by the SDK.
    if vertex_configured():
        # Said explicitly, so the SDK reads GOOGLE_VERTEX_BASE_URL (from its environment flag alone it
        # would look at GOOGLE_GEMINI_BASE_URL).
        # Project and location are passed on too: from the environment alone, a custom base URL makes the
        # SDK treat the endpoint as an unauthenticated API gateway.
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or (credentials.project if credentials else None)
        return genai.Client(
            vertexai=True,
            project=project,
            location=os.environ.get("GOOGLE_CLOUD_LOCATION"),
            credentials=credentials.credentials if credentials is not None else None,
            http_options=types.HttpOptions(async_client_args=ws_args),
        )
    api_version = settings.gemini_api_version
    if any(os.environ.get(k, "").startswith("auth_tokens/") for k in GEMINI_ENV_KEYS):
        api_version = "v1alpha"  # ephemeral tokens exist only there (BidiGenerateContentConstrained)
    return genai.Client(http_options=types.HttpOptions(api_version=api_version, async_client_args=ws_args))


def vertex_configured() -> bool:
    return os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true", "yes")


async def fresh_vertex_credentials(background: list[asyncio.Task[None]]) -> FreshCredentials | None:
    """ADC for Vertex AI (not with an API key), refreshed in the background; None when not wanted."""
    if not vertex_configured() or any(os.environ.get(k) for k in GEMINI_ENV_KEYS):
        return None
    credentials = FreshCredentials()
    if not await asyncio.to_thread(credentials.load):
        return None
    background.append(asyncio.create_task(credentials.keep_fresh()))
    return credentials


def session_config(settings: Settings, tools: ToolRegistry) -> SessionConfig:
    return SessionConfig(
        model=settings.model,
        rules=settings.live_rules,
        vertex=vertex_configured(),
        proactive_audio=settings.proactive_audio,
        thinking_budget=settings.thinking_budget,
        affective_dialog=settings.affective_dialog,
        voice=settings.voice,
        system_instruction=settings.system_instruction,
        uplink_chunk_ms=settings.uplink_chunk_ms,
        resend_buffer_s=settings.resend_buffer_s,
        max_consecutive_failures=settings.max_reconnects,
        context_compression=settings.context_compression,
        tools=tools,
        tool_timeout_s=settings.tool_timeout_s,
        media_resolution=settings.video_media_resolution,
    )


def call_options(settings: Settings) -> CallOptions:
    return CallOptions(
        ice_servers=settings.ice_servers,
        no_media_timeout_s=settings.no_media_timeout_s,
        local_bargein=settings.local_bargein,
        downlink_dtx=settings.downlink_dtx,
        send_silence=settings.send_silence,
        rejoin_grace_s=settings.rejoin_grace_s,
        max_duration_s=settings.max_call_seconds,
        video=VideoOptions(
            fps=settings.video_fps,
            idle_fps=settings.video_idle_fps,
            max_side=settings.video_max_side,
            media_resolution=settings.video_media_resolution,
        ),
    )


def records_options(settings: Settings) -> RecordsOptions | None:
    if not settings.database_url:
        return None
    return RecordsOptions(
        database_url=settings.database_url,
        retention_days=settings.retention_days,
        queue_size=settings.records_queue,
        recordings_dir=settings.recordings_dir if settings.record_audio else None,
        prices=settings.prices,
    )


def start_tracing(worker_name: str) -> CallTracer | None:
    """A call tracer when the standard OTEL_EXPORTER_OTLP_* variables ask for one; else nothing at all
    (OpenTelemetry is not even imported)."""
    if not traces_wanted():
        return None
    from parley import __version__
    from parley.tracing.call_traces import CallTracer, make_provider

    return CallTracer(make_provider(__version__), worker_name)


async def keep_webhooks(webhooks: WebhookSender | None, records: Records | None, owner: str) -> None:
    """With a database, webhooks wait in its outbox until delivered, under `owner`; what a dead process
    under that name left there is queued again."""
    if webhooks is not None and records is not None:
        webhooks.use_outbox(records.outbox, owner)
        await webhooks.resume()


async def webhooks_for_the_lost(webhooks: WebhookSender | None, records: Records, owner: str) -> None:
    """For a process that watches others die (`serve --processes`' front door, `parley signaling`):
    its own webhooks kept under `owner`, and it sends the call.ended of a dead process's calls and the
    webhooks that process had not delivered."""
    await keep_webhooks(webhooks, records, owner)
    records.announce = webhooks.submit if webhooks is not None else None
    records.webhooks = webhooks


def start_webhooks(settings: Settings, registry: CollectorRegistry) -> WebhookSender | None:
    if not settings.webhook_url:
        return None
    if not settings.webhook_secret:
        logger.warning("PARLEY_WEBHOOK_URL without PARLEY_WEBHOOK_SECRET: webhooks go out unsigned")
    sender = WebhookSender(settings.webhook_url, settings.webhook_secret)
    sender.start()
    registry.register(WebhookMetrics(sender))
    return sender


async def open_records(settings: Settings) -> Records | None:
    """The call records database, migrated and with its writer running; None when records are off."""
    options = records_options(settings)
    if options is None:
        return None
    records = Records(options)
    try:
        await records.start()
    except BaseException:
        await records.engine.dispose()
        raise
    return records


@dataclass
class Running:
    """A started server, for tests and for `serve` to shut down."""

    runner: web.AppRunner
    worker: Worker
    emulator: GeminiEmulator | None
    port: int
    background: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: Metrics | None = None
    session_config: SessionConfig | None = None
    records: Records | None = None
    webhooks: WebhookSender | None = None
    tracer: CallTracer | None = None
    recordings: Recordings | None = None
    profiles: ProfileStore | None = None

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        await self.worker.close()
        await self.runner.cleanup()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.webhooks is not None:  # first: what it could not deliver goes to the outbox
            await self.webhooks.stop()
        if self.records is not None:
            await self.records.stop()  # after the calls: their last writes go out first
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports the last spans
        if self.recordings is not None:
            await asyncio.to_thread(self.recordings.stop)  # finishes the files
        if self.emulator is not None:
            await self.emulator.stop()


@dataclass
class Agent:
    """What a process needs to run calls: the worker and the Gemini backend behind it."""

    worker: Worker
    backend: str
    emulator: GeminiEmulator | None  # started here, so stopped by whoever stops the process
    background: list[asyncio.Task[None]]
    metrics: Metrics
    session_config: SessionConfig  # what each call's Gemini session is made from (with its agent's profile)
    records: Records | None = None
    webhooks: WebhookSender | None = None
    tracer: CallTracer | None = None
    recordings: Recordings | None = None
    # The agents calls are made from (a store of the one default agent, unless given one).
    profiles: ProfileStore = field(default_factory=lambda: ProfileStore.open(None))

    async def stop(self) -> None:
        """After the worker's calls have ended: the background, then what keeps their last words."""
        for task in self.background:
            task.cancel()
        await self.metrics.stop()
        if self.emulator is not None:
            await self.emulator.stop()
        if self.webhooks is not None:  # first: what it could not deliver goes to the outbox
            await self.webhooks.stop()
        if self.records is not None:
            await self.records.stop()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)
        if self.recordings is not None:
            await asyncio.to_thread(self.recordings.stop)


async def build_agent(
    settings: Settings,
    tools: ToolRegistry | None = None,
    emulator: GeminiEmulator | EmulatorAddress | None = None,
    max_calls: int | None = None,
    worker_name: str = "serve",
    profiles: ProfileStore | None = None,
) -> Agent:
    """The Gemini backend `settings` ask for (an in-process emulator when no key is set) and a worker on it,
    making each call from its agent's profile (`profiles`, else the agents file the settings name).
    An `emulator` passed in (tests) is used as it is."""
    offer_host_addresses(settings.ice_host_addresses)
    backend = settings.resolved_backend()
    registry = tools or ToolRegistry()
    config = session_config(settings, registry)
    refused = refused_setting(config) if backend != "loopback" else None
    if refused is not None:
        raise SystemExit(f"parley: {refused}")  # every call would fail the same way
    own_emulator: GeminiEmulator | None = None
    if emulator is None and backend == "emulator":
        emulator = own_emulator = GeminiEmulator()
        await emulator.start()
        logger.warning(
            "no GEMINI_API_KEY set: using the offline Gemini Live emulator at %s (you will hear your own "
            "speech echoed back after each turn)",
            emulator.base_url,
        )
    background: list[asyncio.Task[None]] = []
    store = profiles or open_profiles(settings, registry)
    sessions: Callable[[SessionConfig], SessionFactory]
    if backend == "loopback":
        echo = loopback_sessions()
        sessions = lambda _config: echo  # noqa: E731 - an echo has no model to configure
    else:
        credentials = await fresh_vertex_credentials(background) if emulator is None else None
        client = make_client(settings, emulator, credentials)
        sessions = lambda call_config: gemini_sessions(client, call_config)  # noqa: E731
    metrics = Metrics()
    options = call_options(settings)
    records = await open_records(settings)
    webhooks = start_webhooks(settings, metrics.registry)
    await keep_webhooks(webhooks, records, worker_name)
    tracer = start_tracing(worker_name)
    recordings = None
    if settings.record_audio:  # never unless asked: a recording is made only with the setting on
        recordings = Recordings(settings.recordings_dir)
        recordings.start()
        options.audio_tap = recordings.recording
    observers: list[CallObserver] = [metrics] if tracer is None else [metrics, tracer]
    announce = webhooks.submit if webhooks is not None else None
    if records is not None:
        records.announce = announce
        # No call runs under this name yet: any record left open under it is a dead process's call.
        await records.end_calls_of(worker_name)
        observers.append(records.recorder(worker_name, settings.model, announce))
        metrics.registry.register(WriterMetrics(records.writer))
    elif webhooks is not None:  # webhooks without a database: the recorder's writes go nowhere
        observers.append(
            CallRecorder(lambda write: True, worker_name, settings.model, settings.prices, announce=announce)
        )
    options.observer = Observers(observers)
    if backend == "loopback":
        options.local_bargein = False  # the echo is the user's own voice: it must not cut itself off
    worker = Worker(
        call_planner(store, config, registry, sessions),
        options,
        max_calls=settings.max_calls if max_calls is None else max_calls,
    )
    return Agent(
        worker,
        backend,
        own_emulator,
        background,
        metrics,
        config,
        records,
        webhooks,
        tracer,
        recordings,
        profiles=store,
    )


async def start(
    settings: Settings, tools: ToolRegistry | None = None, emulator: GeminiEmulator | None = None
) -> Running:
    """Start serving. An `emulator` passed in (tests) is used as it is and left running at stop()."""
    agent = await build_agent(settings, tools, emulator)
    worker, metrics, backend = agent.worker, agent.metrics, agent.backend
    # before listening: first uses cost tens of ms on the loop, which would stall the first calls
    logger.info("warmed up in %.2f s", await warm_up(sdk=backend != "loopback"))
    emulator = emulator or agent.emulator
    if settings.turn_secret and settings.turn_urls:  # fresh TURN credentials for each call
        worker.ice_server_source = ice_server_source(
            settings.ice_servers, settings.turn_urls, settings.turn_secret, settings.turn_ttl_s, "worker"
        )
    offline = emulator is not None
    app = front_door(settings, worker, agent.profiles, agent.records, lambda: offline)
    if settings.join_secret is None:
        logger.warning(
            "no PARLEY_JOIN_SECRET: anyone who can reach http://%s:%d can start calls",
            settings.host,
            settings.port,
        )
    add_metrics_route(app, metrics.render)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    metrics.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else settings.port
    logger.warning(
        "parley listening on http://%s:%d (backend: %s, model %s)",
        settings.host,
        port,
        backend,
        settings.model,
    )
    return Running(
        runner,
        worker,
        agent.emulator,
        port,
        agent.background,
        metrics,
        agent.session_config,
        agent.records,
        agent.webhooks,
        agent.tracer,
        agent.recordings,
        profiles=agent.profiles,
    )
