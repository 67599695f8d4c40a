"""Signaling's side of the wire: `RedisCallHost`, the fleet of `parley worker`s as one `CallHost`.

It keeps a view of the registry (refreshed every heartbeat), sends each offer to the least-loaded live
worker that takes calls (the next one if that worker refuses), and reaches the worker holding a call for
its state or to hang it up. The wire is described in parley/fleet/wire.py.

A worker whose registry entry expired (no heartbeat for PARLEY_WORKER_TTL) is lost: `GET` on one of
its calls answers `{"state": "ended", "end_reason": "worker_lost"}` for five minutes, then 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from parley.agent.sdp import OfferError
from parley.agent.worker import CallNotFound, WorkerBusy
from parley.fleet.gauges import Gauges, gauge_registry
from parley.fleet.monitor import default_worker_id
from parley.fleet.options import FleetOptions
from parley.fleet.wire import (
    MESSAGE_TTL_S,
    REDIS_ERRORS,
    SIGNALING_TTL_S,
    Backoff,
    Keys,
    connect,
    decode,
    encode,
)
from parley.signaling.app import WorkerTimeout

logger = logging.getLogger("parley.signaling")


@dataclass
class WorkerView:
    """What signaling knows of one worker: its last heartbeat, and the calls it is placing there now."""

    id: str
    capacity: int = 0
    active: int = 0
    accepting: bool = False
    state: str = "ready"
    lag_ms: float = 0.0
    cpu: float = 0.0
    load: float = 0.0
    instance: str = ""  # the worker process: versions are per instance
    version: int = 0
    backend: str = ""
    host: str = ""
    agents: frozenset[str] | None = None  # the only agents it serves (--agents-only); None: any
    seen_at: float = 0.0  # monotonic time of the last heartbeat read
    inflight: int = 0  # offers sent and not yet answered
    suspect_until_version: int = -1  # did not answer: skipped until it heartbeats again

    def update(self, fields: dict[str, str]) -> None:
        def num(name: str) -> float:
            try:
                return float(fields.get(name, 0))
            except ValueError:
                return 0.0

        instance = fields.get("instance", "")
        if instance != self.instance:  # a new process under the same id: start over
            self.instance, self.version, self.suspect_until_version = instance, -1, -1
        version = int(num("version"))
        if version >= self.version:  # a reply may have told us of a newer load already
            self.version = version
            self.active = int(num("active"))
            self.accepting = fields.get("accepting") == "1"
        self.capacity = int(num("capacity"))
        self.state = fields.get("state", "ready")
        self.lag_ms = num("lag_ms")
        self.cpu = num("cpu")
        self.load = num("load")
        self.backend = fields.get("backend", "")
        self.host = fields.get("host", "")
        only = fields.get("agents", "")
        self.agents = frozenset(only.split(",")) if only else None
        self.seen_at = time.monotonic()

    def note_load(self, load: Any) -> None:
        if not isinstance(load, dict) or load.get("instance") != self.instance:
            return
        if int(load.get("version", 0)) > self.version:
            self.version = int(load["version"])
            self.active = int(load.get("active", self.active))
            self.accepting = bool(load.get("accepting", self.accepting))

    def takes_calls(self) -> bool:
        if not self.accepting or self.state != "ready" or self.version <= self.suspect_until_version:
            return False
        return not self.capacity or self.active + self.inflight < self.capacity

    def serves(self, agent: str | None) -> bool:
        return self.agents is None or agent in self.agents

    def fill(self) -> float:
        return (self.active + self.inflight) / self.capacity if self.capacity else 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "state": self.state,
            "accepting": self.accepting,
            "active_calls": self.active,
            "capacity": self.capacity,
            "lag_ms": self.lag_ms,
            "cpu": self.cpu,
            "load": self.load,
            "backend": self.backend,
            "agents": sorted(self.agents) if self.agents is not None else "*",
            "heartbeat_age_s": round(time.monotonic() - self.seen_at, 2),
        }


class RedisCallHost:
    """The fleet as one `CallHost`; `start()` before use, `close()` after."""

    def __init__(self, options: FleetOptions, name: str | None = None) -> None:
        if not options.redis_url:
            raise ValueError("a Redis URL is needed")
        self.options = options
        self.name = name or f"signaling-{default_worker_id()}"  # what it owes is kept under this name
        self.keys = Keys(options.redis_prefix)
        # Replies are awaited with blocking pops, so the socket timeout must outlast the longest one.
        self.redis = connect(options.redis_url, command_timeout_s=options.dispatch_timeout_s + 5)
        self._gauges = gauge_registry(self.gauges)
        self.workers: dict[str, WorkerView] = {}
        self.lost: deque[dict[str, Any]] = deque(maxlen=20)
        self.on_worker_gone: Callable[[str], None] | None = None  # told each worker that left or was lost
        self.redis_ok = False
        self.calls_placed = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def rpc_timeout_s(self) -> float:
        """For a call's state or hang-up: a live worker answers in milliseconds."""
        return min(self.options.dispatch_timeout_s, 3.0)

    async def start(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.refresh()
        self._task = asyncio.create_task(self._watch(), name="registry-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def live_signaling(self, names: set[str]) -> set[str]:
        """Those of `names` that are `parley signaling` processes alive now; raises if Redis cannot say."""
        ordered = sorted(names)
        pipe = self.redis.pipeline(transaction=False)
        for name in ordered:
            pipe.exists(self.keys.signaling(name))
        found = await pipe.execute() if ordered else []
        return {name for name, exists in zip(ordered, found, strict=True) if exists}

    # --- the registry ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        backoff = Backoff(cap_s=1.0)
        while True:
            try:
                await self.refresh()
            except REDIS_ERRORS as exc:
                if self.redis_ok:
                    logger.warning("lost Redis (%s): no new calls until it is back", exc)
                self.redis_ok = False
                await backoff.wait()
                continue
            backoff.reset()
            await asyncio.sleep(self.options.heartbeat_s)

    async def refresh(self) -> None:
        await self.redis.set(self.keys.signaling(self.name), "1", px=int(SIGNALING_TTL_S * 1000))
        ids = sorted(str(i) for i in await self.redis.smembers(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self.keys.worker(worker_id))
        entries = await pipe.execute() if ids else []
        if not self.redis_ok:
            logger.warning("connected to Redis: %d workers registered", len(ids))
        self.redis_ok = True
        alive: set[str] = set()
        dead: list[str] = []
        for worker_id, fields in zip(ids, entries, strict=True):
            if not fields:
                dead.append(worker_id)
                continue
            alive.add(worker_id)
            view = self.workers.get(worker_id)
            if view is None:
                view = self.workers[worker_id] = WorkerView(worker_id)
                logger.warning("worker %s joined (capacity %s)", worker_id, fields.get("capacity"))
            view.update(fields)
        if dead:
            await self.redis.srem(self.keys.workers, *dead)
        gone = set(dead)  # expired before this process saw it, or while it was watching
        for worker_id in [w for w in self.workers if w not in alive]:
            gone.add(worker_id)
            view = self.workers.pop(worker_id)
            how = "left" if view.state != "ready" else "lost"
            self.lost.append({"id": worker_id, "how": how, "at": round(time.time(), 3)})
            if how == "lost":
                ttl = self.options.worker_ttl_s
                logger.warning("worker %s lost: no heartbeat for %.1f s", worker_id, ttl)
            else:
                logger.warning("worker %s left", worker_id)
        if self.on_worker_gone is not None:
            for worker_id in sorted(gone):
                self.on_worker_gone(worker_id)

    def candidates(self, agent: str | None = None) -> list[WorkerView]:
        """Workers that take calls of `agent`, least loaded first (fill, then lag, then at random)."""
        ready = [w for w in self.workers.values() if w.takes_calls() and w.serves(agent)]
        return sorted(
            ready, key=lambda w: (round(w.fill(), 3), w.active + w.inflight, w.lag_ms, random.random())
        )

    # --- requests to workers --------------------------------------------------------------------

    async def _request(
        self, worker_id: str, message: dict[str, Any], timeout_s: float
    ) -> dict[str, Any] | None:
        """Send a request to a worker's inbox and wait for its reply; None when none came in time."""
        request_id = uuid.uuid4().hex
        reply_key = self.keys.reply(request_id)
        deadline = round(time.time() + timeout_s, 3)
        message = {**message, "id": request_id, "reply": reply_key, "deadline": deadline}
        inbox = self.keys.inbox(worker_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(inbox, encode(message))
        pipe.expire(inbox, MESSAGE_TTL_S)
        await pipe.execute()
        item = await self.redis.blpop([reply_key], timeout=max(0.01, timeout_s))
        if not item:
            return None
        return decode(item[1])

    async def create_call(
        self,
        offer_sdp: str,
        max_seconds: float | None = None,
        agent: str | None = None,
        variables: Mapping[str, str] | None = None,
        caller: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        candidates = self.candidates(agent)
        if not candidates:
            if not self.redis_ok:
                raise WorkerBusy("the call registry (Redis) is unavailable", retry_after_s=2)
            if not self.workers:
                raise WorkerBusy("no workers are running")
            if not any(w.serves(agent) for w in self.workers.values()):
                raise WorkerBusy(f"no worker serves the agent {agent!r}")
            raise WorkerBusy("no worker can take a call now")
        deadline = time.monotonic() + self.options.dispatch_timeout_s
        for index, view in enumerate(candidates):
            if not view.takes_calls():  # filled up by a concurrent request meanwhile
                continue
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            # Leave time for the next worker if this one does not answer.
            timeout_s = left if index == len(candidates) - 1 else left / 2
            view.inflight += 1
            try:
                message = {
                    "op": "create",
                    "sdp": offer_sdp,
                    "max_seconds": max_seconds,
                    "agent": agent,
                    "variables": dict(variables or {}),
                    "caller": dict(caller or {}),
                }
                reply = await self._request(view.id, message, timeout_s)
            except REDIS_ERRORS as exc:
                logger.warning("could not reach Redis to place a call: %s", exc)
                raise WorkerBusy("the call registry (Redis) is unavailable", retry_after_s=2) from None
            finally:
                view.inflight -= 1
            if reply is None:
                logger.warning("worker %s did not answer within %.1f s", view.id, timeout_s)
                view.suspect_until_version = view.version
                continue
            view.note_load(reply.get("load"))
            if reply.get("ok"):
                self.calls_placed += 1
                return str(reply["call"]), str(reply["sdp"])
            if reply.get("error") == "offer":
                raise OfferError(int(reply.get("status", 400)), str(reply.get("message", "bad offer")))
            logger.info("worker %s refused a call: %s", view.id, reply.get("message"))
        raise WorkerBusy("no worker could take the call")

    async def _holder(self, call_id: str) -> tuple[str, bool]:
        """The id of the worker holding a call, and whether that worker is alive."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.call(call_id))
        worker_id = (await pipe.execute())[0]
        if not worker_id:
            raise CallNotFound(call_id)
        alive = bool(await self.redis.exists(self.keys.worker(worker_id)))
        return str(worker_id), alive

    async def _ask_holder(self, call_id: str, message: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """(worker id, its reply); the reply is None when the worker is lost."""
        try:
            worker_id, alive = await self._holder(call_id)
            if not alive:
                return worker_id, None
            reply = await self._request(worker_id, message, self.rpc_timeout_s)
            if reply is None and not await self.redis.exists(self.keys.worker(worker_id)):
                return worker_id, None
        except REDIS_ERRORS:
            raise WorkerBusy("the call registry (Redis) is unavailable", retry_after_s=2) from None
        if reply is None:
            raise WorkerTimeout(f"worker {worker_id} did not answer within {self.rpc_timeout_s:.0f} s")
        if not reply.get("ok"):
            if reply.get("error") == "offer":
                raise OfferError(int(reply.get("status", 400)), str(reply.get("message", "bad offer")))
            raise CallNotFound(call_id)
        return worker_id, reply

    async def describe_call(self, call_id: str) -> dict[str, Any]:
        """The call's state and counters from the worker holding it, with that worker's id."""
        worker_id, reply = await self._ask_holder(call_id, {"op": "describe", "call": call_id})
        if reply is None:
            return {"call": call_id, "state": "ended", "end_reason": "worker_lost", "worker": worker_id}
        summary = reply.get("summary")
        return {**(summary if isinstance(summary, dict) else {}), "worker": worker_id}

    async def end_call(self, call_id: str, reason: str = "hangup") -> None:
        _, reply = await self._ask_holder(call_id, {"op": "end", "call": call_id, "reason": reason})
        if reply is None:  # its worker is gone, and the call with it
            raise CallNotFound(call_id)

    async def resume_call(self, call_id: str, offer_sdp: str) -> str:
        """A caller rejoins its call on a new peer connection: the offer goes to the worker holding it."""
        try:
            _, reply = await self._ask_holder(call_id, {"op": "resume", "call": call_id, "sdp": offer_sdp})
        except WorkerTimeout as exc:
            raise WorkerBusy(str(exc), retry_after_s=2) from None
        if reply is None:  # its worker is gone, and the call with it
            raise CallNotFound(call_id)
        return str(reply["sdp"])

    def stats(self) -> dict[str, Any]:
        workers = [w.describe() for w in self.workers.values()]
        return {
            "mode": "fleet",
            "redis": "ok" if self.redis_ok else "unavailable",
            "workers": workers,
            "workers_accepting": sum(1 for w in self.workers.values() if w.takes_calls()),
            "active_calls": sum(w.active for w in self.workers.values()),
            "capacity": sum(w.capacity for w in self.workers.values()),
            "calls_placed": self.calls_placed,
            "workers_gone": list(self.lost),
        }

    def gauges(self) -> Gauges:
        stats = self.stats()
        capacity = stats["capacity"]
        return {
            "parley_fleet_workers": (len(self.workers), "workers registered"),
            "parley_fleet_workers_accepting": (stats["workers_accepting"], "workers taking calls"),
            "parley_fleet_active_calls": (stats["active_calls"], "calls held by the workers"),
            "parley_fleet_capacity": (capacity, "calls the workers take in all"),
            "parley_fleet_load": (
                round(stats["active_calls"] / capacity, 3) if capacity else 1.0,
                "active calls / capacity",
            ),
            "parley_fleet_redis_up": (int(self.redis_ok), "1 while Redis answers"),
        }

    @property
    def registry(self) -> CollectorRegistry:
        """What /metrics shows: the fleet's gauges, and collectors added by the signaling process."""
        return self._gauges

    def metrics(self) -> bytes:
        return generate_latest(self._gauges)
