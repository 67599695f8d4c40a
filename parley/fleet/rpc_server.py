"""A worker's side of the wire: it dials out to Redis, registers with its capacity, reports its load
every heartbeat (active calls, event-loop lag, CPU) and answers the requests in its inbox.

`parley signaling` sends it offers through its inbox list and reads its answers; media then flows
between the caller and this process directly. Redis being down only stops new calls: calls in progress
never touch it. The wire is described in parley/fleet/wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

from parley.agent.worker import Worker
from parley.fleet.monitor import LoadMonitor, default_worker_id
from parley.fleet.options import FleetOptions
from parley.fleet.requests import answer
from parley.fleet.wire import (
    CALL_KEY_TTL_S,
    MESSAGE_TTL_S,
    REDIS_ERRORS,
    Backoff,
    Keys,
    connect,
    decode,
    encode,
)

logger = logging.getLogger("parley.worker")

# A request picked up this long after its deadline was given up on by signaling (clock skew margin).
EXPIRED_GRACE_S = 2.0


class FleetWorker:
    """Connects one `Worker` to Redis: registration and heartbeats, the inbox, drain and deregistration."""

    def __init__(
        self,
        worker: Worker,
        options: FleetOptions,
        worker_id: str | None = None,
        backend: str = "gemini",
        agents_only: list[str] | None = None,
    ) -> None:
        if not options.redis_url:
            raise ValueError("a Redis URL is needed")
        self.worker = worker
        self.options = options
        self.id = worker_id or default_worker_id()
        self.backend = backend
        self.agents_only = agents_only  # dispatch sends it calls of these agents only; None: any
        self.keys = Keys(options.redis_prefix)
        self.redis = connect(options.redis_url)
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
        if self.monitor.lag_ms > self.options.worker_max_lag_ms:
            return f"event loop lag {self.monitor.lag_ms:.0f} ms"
        if self.monitor.cpu > self.options.worker_max_cpu:
            return f"CPU {self.monitor.cpu:.2f}"
        return None

    def load_ratio(self) -> float:
        """The highest of calls/capacity, lag/max lag and CPU/max CPU: what autoscaling targets."""
        ratios = [
            len(self.worker.calls) / self.capacity if self.capacity else 0.0,
            self.monitor.lag_ms / self.options.worker_max_lag_ms if self.options.worker_max_lag_ms else 0.0,
            self.monitor.cpu / self.options.worker_max_cpu if self.options.worker_max_cpu else 0.0,
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

    def gauges(self) -> dict[str, tuple[float, str]]:
        """What the health port's /metrics says of this worker: name -> (value, help)."""
        return {
            "parley_worker_load": (self.load_ratio(), "highest of calls/capacity, lag/max, CPU/max"),
            "parley_worker_active_calls": (len(self.worker.calls), "calls held"),
            "parley_worker_capacity": (self.capacity, "calls this worker takes"),
            "parley_worker_event_loop_lag_ms": (round(self.monitor.lag_ms, 1), "smoothed lag"),
            "parley_worker_cpu": (round(self.monitor.cpu, 3), "CPU, fraction of one core"),
            "parley_worker_accepting": (int(self.over_limits() is None), "1 when it takes calls"),
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
            "agents": ",".join(self.agents_only or []),
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
                async with asyncio.timeout(self.options.heartbeat_s):
                    await self._beat_now.wait()

    async def _beat(self) -> None:
        calls = set(self.worker.calls)
        ended = self._advertised - calls
        key = self.keys.worker(self.id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=self.registration())  # type: ignore[arg-type]
        pipe.pexpire(key, int(self.options.worker_ttl_s * 1000))
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
        result = await answer(self.worker, request, self.over_limits(), self.agents_only)
        call_key = str(result["call"]) if op == "create" and result.get("ok") else None
        if call_key is not None and deadline and time.time() > deadline + EXPIRED_GRACE_S:
            # Nobody waits for this answer any more: do not leave a call no one will join.
            await self.worker.end_call(call_key, "dispatch_timeout")
            result, call_key = {"ok": False, "error": "expired", "message": "answered too late"}, None
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
