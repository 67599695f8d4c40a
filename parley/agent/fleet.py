"""`parley worker`: a headless agent worker that takes calls handed to it through Redis.

The worker dials out to Redis (it needs no inbound port for control), registers with its capacity and
reports its load every heartbeat (active calls, event-loop lag, CPU). `parley signaling` sends it offers
through its inbox list and reads its answers; media then flows between the caller and this process
directly. Redis being down only stops new calls: calls in progress never touch it.

SIGTERM drains: no new calls, the current ones may finish (up to PARLEY_DRAIN_TIMEOUT), then exit 0.
SIGINT (or a second SIGTERM) ends the calls at once. The wire is described in agent/redis_wire.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration
from parley.agent.metrics import Metrics
from parley.agent.redis_wire import (
    CALL_KEY_TTL_S,
    MESSAGE_TTL_S,
    REDIS_ERRORS,
    Backoff,
    Keys,
    connect,
    decode,
    encode,
)
from parley.agent.sdp import OfferError
from parley.agent.tools import ToolRegistry
from parley.agent.turn import ice_server_source
from parley.agent.worker import CallNotFound, Worker, WorkerBusy
from parley.settings import Settings

logger = logging.getLogger("parley.worker")

# `parley worker` takes this many calls when PARLEY_MAX_CALLS is 0 (aiortc lags past ~10-15 a process).
DEFAULT_WORKER_CALLS = 12
# A request picked up this long after its deadline was given up on by signaling (clock skew margin).
EXPIRED_GRACE_S = 2.0
LAG_SAMPLE_S = 0.1


def default_worker_id() -> str:
    """host-pid-random: unique across restarts; the host name is the pod name on Kubernetes."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class LoadMonitor:
    """The event loop's lag (how late a 100 ms sleep wakes, smoothed) and this process's CPU use."""

    def __init__(self) -> None:
        self.lag_ms = 0.0
        self.lag_max_ms = 0.0  # the worst since the last report
        self.cpu = 0.0  # fraction of one core, smoothed
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, (loop.time() - started - LAG_SAMPLE_S) * 1000)
            self.lag_ms += 0.2 * (lag - self.lag_ms)
            self.lag_max_ms = max(self.lag_max_ms, lag)

    def sample_cpu(self) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        if wall - last_wall >= 0.2:
            used = (cpu - last_cpu) / (wall - last_wall)
            self.cpu += 0.5 * (used - self.cpu)
            self._cpu_mark = (wall, cpu)


async def warm_up() -> float:
    """Do once what every call needs, so the first call starts fast: codecs, resampler, VAD, and a
    throwaway offer/answer (certificate, ICE gathering, SDP). Returns the seconds it took."""
    started = time.monotonic()
    from parley.agent.downlink import ModelAudio, PlayoutBuffer
    from parley.agent.uplink import OpusUplink
    from parley.agent.vad import SpeechDetector

    OpusUplink(lambda pcm, at: None)
    ModelAudio(PlayoutBuffer()).push(bytes(960), time.monotonic())
    SpeechDetector()
    offerer = RTCPeerConnection(rtc_configuration([]))
    answerer = RTCPeerConnection(rtc_configuration([]))
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        offerer.createDataChannel("events")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
    finally:
        await offerer.close()
        await answerer.close()
    return time.monotonic() - started


class FleetWorker:
    """Connects one `Worker` to Redis: registration and heartbeats, the inbox, drain and deregistration."""

    def __init__(
        self, worker: Worker, settings: Settings, worker_id: str | None = None, backend: str = "gemini"
    ) -> None:
        if not settings.redis_url:
            raise ValueError("a Redis URL is needed")
        self.worker = worker
        self.settings = settings
        self.id = worker_id or settings.worker_id or default_worker_id()
        self.backend = backend
        self.keys = Keys(settings.redis_prefix)
        self.redis = connect(settings.redis_url)
        self.monitor = LoadMonitor()
        self.state = "starting"  # -> ready -> draining -> stopped
        self.redis_ok = False
        self.last_beat_at: float | None = None  # monotonic time of the last heartbeat Redis took
        self.started_at = time.time()
        # Versions count from 1 in each process: with the instance, a restarted worker that kept its
        # id is not mistaken for an old report.
        self.instance = secrets.token_hex(4)
        self._version = 0
        self._advertised: set[str] = set()  # call keys written to Redis
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._beat_now = asyncio.Event()
        self._stopping = False
        self.metrics: Metrics | None = None  # served on the health port's /metrics

    # --- load -----------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.worker.max_calls

    def over_limits(self) -> str | None:
        """Why this worker takes no new call now, or None."""
        if not self.worker.accepting:
            return "draining"
        if self.capacity and len(self.worker.calls) >= self.capacity:
            return f"all {self.capacity} call slots are in use"
        if self.monitor.lag_ms > self.settings.worker_max_lag_ms:
            return f"event loop lag {self.monitor.lag_ms:.0f} ms"
        if self.monitor.cpu > self.settings.worker_max_cpu:
            return f"CPU {self.monitor.cpu:.2f}"
        return None

    def load_ratio(self) -> float:
        """The highest of calls/capacity, lag/max lag and CPU/max CPU: what autoscaling targets."""
        ratios = [
            len(self.worker.calls) / self.capacity if self.capacity else 0.0,
            self.monitor.lag_ms / self.settings.worker_max_lag_ms if self.settings.worker_max_lag_ms else 0.0,
            self.monitor.cpu / self.settings.worker_max_cpu if self.settings.worker_max_cpu else 0.0,
        ]
        return round(max(ratios), 3)

    def load(self) -> dict[str, Any]:
        self._version += 1
        return {
            "instance": self.instance,
            "version": self._version,
            "active": len(self.worker.calls),
            "capacity": self.capacity,
            "accepting": self.over_limits() is None,
        }

    def registration(self) -> dict[str, str]:
        self.monitor.sample_cpu()
        load = self.load()
        fields: dict[str, Any] = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state,
            "backend": self.backend,
            "capacity": self.capacity,
            "active": load["active"],
            "accepting": int(load["accepting"]),
            "instance": self.instance,
            "version": load["version"],
            "lag_ms": round(self.monitor.lag_ms, 1),
            "lag_max_ms": round(self.monitor.lag_max_ms, 1),
            "cpu": round(self.monitor.cpu, 3),
            "load": self.load_ratio(),
            "calls_started": self.worker.calls_started,
            "started_at": round(self.started_at, 3),
            "updated_at": round(time.time(), 3),
        }
        self.monitor.lag_max_ms = 0.0
        return {k: str(v) for k, v in fields.items()}

    # --- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.monitor.start()
        self.state = "ready"
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._inbox(), name="inbox"),
        ]

    async def drain(self, timeout_s: float) -> None:
        """Stop taking calls (and say so at once), let the current ones finish, then leave."""
        logger.warning("draining: %d calls, up to %.0f s", len(self.worker.calls), timeout_s)
        self.state = "draining"
        self.worker.accepting = False
        self._beat_now.set()
        await self.worker.drain(timeout_s)
        await self.stop()

    async def stop(self) -> None:
        """End every call, deregister, and close the Redis connection (once)."""
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopped"
        self.worker.accepting = False
        await self.worker.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        try:
            await asyncio.wait_for(self._deregister(), 5)
        except REDIS_ERRORS as exc:  # TimeoutError is one of them
            logger.warning("could not deregister from Redis: %s", exc)
        await self.monitor.stop()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def _deregister(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(self.keys.workers, self.id)
        pipe.delete(self.keys.worker(self.id))
        for call_id in self._advertised:
            pipe.delete(self.keys.call(call_id))
        await pipe.execute()
        # Answer what was queued meanwhile, so nobody waits for a timeout.
        while True:
            raw = await self.redis.rpop(self.keys.inbox(self.id))
            if not isinstance(raw, str):
                break
            request = decode(raw)
            if request and request.get("reply"):
                await self._reply(request, self._refusal(request))
        await self.redis.delete(self.keys.inbox(self.id))
        logger.warning("worker %s left the fleet", self.id)

    # --- heartbeats -----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        backoff = Backoff(cap_s=1.0)
        while not self._stopping:
            try:
                await self._beat()
            except REDIS_ERRORS as exc:
                if self.redis_ok:
                    logger.warning("lost Redis (%s): calls go on; reconnecting", exc)
                self.redis_ok = False
                await backoff.wait()
                continue
            if not self.redis_ok:
                logger.warning("worker %s registered with Redis (capacity %d)", self.id, self.capacity)
            self.redis_ok = True
            backoff.reset()
            self._beat_now.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that meets a set().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._beat_now.wait()

    async def _beat(self) -> None:
        calls = set(self.worker.calls)
        ended = self._advertised - calls
        key = self.keys.worker(self.id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=self.registration())  # type: ignore[arg-type]
        pipe.pexpire(key, int(self.settings.worker_ttl_s * 1000))
        pipe.sadd(self.keys.workers, self.id)
        for call_id in calls:
            pipe.set(self.keys.call(call_id), self.id, ex=CALL_KEY_TTL_S)
        for call_id in ended:
            pipe.delete(self.keys.call(call_id))
        await pipe.execute()
        self._advertised = (self._advertised - ended) | calls
        self.last_beat_at = time.monotonic()

    # --- requests -------------------------------------------------------------------------------

    async def _inbox(self) -> None:
        backoff = Backoff(cap_s=1.0)
        inbox = self.keys.inbox(self.id)
        while not self._stopping:
            try:
                item = await self.redis.brpop([inbox], timeout=1)
            except REDIS_ERRORS:
                await backoff.wait()
                continue
            backoff.reset()
            if not item:
                continue
            request = decode(item[1])
            if request is None or not isinstance(request.get("reply"), str):
                logger.warning("ignored a malformed request")
                continue
            task = asyncio.create_task(self._handle(request), name=f"request-{request.get('op')}")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _refusal(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "create":
            return {"ok": False, "error": "busy", "message": "this worker is shutting down", "retry_after": 2}
        return {"ok": False, "error": "not_found", "message": "no such call"}

    async def _handle(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        deadline = float(request.get("deadline") or 0)
        if deadline and time.time() > deadline + EXPIRED_GRACE_S:
            await self._reply(request, {"ok": False, "error": "expired", "message": "picked up too late"})
            return
        call_key: str | None = None
        try:
            if op == "create":
                reason = self.over_limits()
                if reason is not None:
                    raise WorkerBusy(reason, retry_after_s=2)
                limit = request.get("max_seconds")  # the join token's call length, if it has one
                call_id, answer = await self.worker.create_call(
                    str(request.get("sdp", "")),
                    max_seconds=float(limit) if isinstance(limit, int | float) else None,
                )
                if deadline and time.time() > deadline + EXPIRED_GRACE_S:
                    # Nobody waits for this answer any more: do not leave a call no one will join.
                    await self.worker.end_call(call_id, "dispatch_timeout")
                    result: dict[str, Any] = {"ok": False, "error": "expired", "message": "answered too late"}
                else:
                    result = {"ok": True, "call": call_id, "sdp": answer}
                    call_key = call_id
            elif op == "resume":
                sdp = str(request.get("sdp", ""))
                result = {"ok": True, "sdp": await self.worker.resume_call(str(request.get("call")), sdp)}
            elif op == "describe":
                result = {"ok": True, "summary": self.worker.describe_call(str(request.get("call")))}
            elif op == "end":
                await self.worker.end_call(str(request.get("call")), str(request.get("reason") or "hangup"))
                result = {"ok": True}
            else:
                result = {"ok": False, "error": "internal", "message": f"unknown request {op!r}"}
        except WorkerBusy as exc:
            result = {"ok": False, "error": "busy", "message": exc.message, "retry_after": exc.retry_after_s}
        except OfferError as exc:
            result = {"ok": False, "error": "offer", "status": exc.status, "message": exc.message}
        except CallNotFound:
            result = {"ok": False, "error": "not_found", "message": "no such call"}
        except Exception as exc:
            logger.exception("request %s failed", op)
            result = {"ok": False, "error": "internal", "message": type(exc).__name__}
        delivered = await self._reply(request, result, call_key)
        if call_key is not None and not delivered:
            await self.worker.end_call(call_key, "dispatch_failed")

    async def _reply(
        self, request: dict[str, Any], result: dict[str, Any], call_id: str | None = None
    ) -> bool:
        """Send the reply (and, for a new call, its key); retried while Redis blips. False if it failed."""
        result = {**result, "id": request.get("id"), "worker": self.id, "load": self.load()}
        deadline = time.monotonic() + 5
        backoff = Backoff()
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                if call_id is not None:
                    pipe.set(self.keys.call(call_id), self.id, ex=CALL_KEY_TTL_S)
                pipe.lpush(str(request["reply"]), encode(result))
                pipe.expire(str(request["reply"]), MESSAGE_TTL_S)
                await pipe.execute()
                if call_id is not None:
                    self._advertised.add(call_id)
                return True
            except REDIS_ERRORS as exc:
                if time.monotonic() > deadline:
                    logger.warning("could not reply to %s: %s", request.get("op"), exc)
                    return False
                await backoff.wait()

    # --- health endpoint ------------------------------------------------------------------------

    def health_app(self) -> web.Application:
        """GET /healthz (alive), /readyz (registered and taking calls), /metrics (Prometheus text)."""

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response(
                {"status": "ok", "worker": self.id, "state": self.state, "redis": self.redis_ok}
                | self.worker.stats()
            )

        async def readyz(request: web.Request) -> web.Response:
            fresh = self.last_beat_at is not None and (
                time.monotonic() - self.last_beat_at < self.settings.worker_ttl_s
            )
            ready = self.state == "ready" and fresh
            return web.json_response(
                {"ready": ready, "state": self.state, "redis": self.redis_ok}, status=200 if ready else 503
            )

        async def metrics(request: web.Request) -> web.Response:
            label = f'{{worker="{self.id}"}}'
            gauges = {
                "parley_worker_load": (self.load_ratio(), "highest of calls/capacity, lag/max, CPU/max"),
                "parley_worker_active_calls": (len(self.worker.calls), "calls held"),
                "parley_worker_capacity": (self.capacity, "calls this worker takes"),
                "parley_worker_event_loop_lag_ms": (round(self.monitor.lag_ms, 1), "smoothed lag"),
                "parley_worker_cpu": (round(self.monitor.cpu, 3), "CPU, fraction of one core"),
                "parley_worker_accepting": (int(self.over_limits() is None), "1 when it takes calls"),
            }
            lines = []
            for name, (value, help_text) in gauges.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{label} {value}"]
            body = ("\n".join(lines) + "\n").encode()
            content_type = "text/plain; version=0.0.4; charset=utf-8"
            if self.metrics is not None:  # the calls' own metrics, as `parley serve` has them
                calls_body, content_type = self.metrics.render()
                body = calls_body + body
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        return app


# --- the process --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
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
    for module in args.tools or []:
        load_tool_module(module)
    raise SystemExit(asyncio.run(run_worker(settings, default_registry, args.id)))


async def run_worker(
    settings: Settings, tools: ToolRegistry | None = None, worker_id: str | None = None
) -> int:
    """Run one worker process until SIGTERM (drain) or SIGINT (end calls now). Returns the exit status."""
    from parley.server import build_agent

    agent = await build_agent(settings, tools, max_calls=settings.max_calls or DEFAULT_WORKER_CALLS)
    worker, metrics, backend, emulator, background = (
        agent.worker,
        agent.metrics,
        agent.backend,
        agent.emulator,
        agent.background,
    )
    worker_id = worker_id or settings.worker_id or default_worker_id()
    if settings.turn_secret:
        worker.ice_server_source = ice_server_source(
            settings.ice_servers, settings.turn_urls, settings.turn_secret, settings.turn_ttl_s, worker_id
        )
    logger.warning("worker %s warmed up in %.2f s", worker_id, await warm_up())
    fleet = FleetWorker(worker, settings, worker_id, backend)
    fleet.metrics = metrics
    metrics.start()
    runner: web.AppRunner | None = None
    if settings.worker_health_port:
        runner = web.AppRunner(fleet.health_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.worker_health_host, settings.worker_health_port).start()

    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    await fleet.start()
    try:
        await stop.wait()
        if signals[0] == signal.SIGTERM:
            drain = asyncio.create_task(fleet.drain(settings.drain_timeout_s))
            while not drain.done():
                stop.clear()
                again = asyncio.create_task(stop.wait())
                await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
                again.cancel()
                if stop.is_set():
                    logger.warning("second signal: ending %d calls now", len(worker.calls))
                    await worker.close()
            await drain
    finally:
        await fleet.stop()
        for task in background:
            task.cancel()
        await metrics.stop()
        if runner is not None:
            await runner.cleanup()
        if emulator is not None:
            await emulator.stop()
    return 0
