"""The wire between `parley signaling` and `parley worker` processes: Redis keys, messages, connections.

Redis keys (`{p}` is PARLEY_REDIS_PREFIX, default `parley`):

    {p}:workers                set of worker ids that have registered (members without a live hash are dead)
    {p}:worker:{id}            hash: capacity, load and state; rewritten each heartbeat, expires after
                               PARLEY_WORKER_TTL (a worker that stops heartbeating disappears)
    {p}:worker:{id}:inbox      list of JSON requests to that worker (LPUSH by signaling, BRPOP by the worker)
    {p}:reply:{request id}     list holding the worker's one JSON reply (BLPOP by the signaling that asked)
    {p}:call:{call id}         the id of the worker holding the call; refreshed by that worker each heartbeat
    {p}:signaling:{name}       a `parley signaling` process is alive; refreshed each heartbeat, expires
                               after SIGNALING_TTL_S (the webhooks it owes are then another's to send)

Requests: {"id", "op": "create" | "resume" | "end" | "describe", "reply", "deadline" (Unix time),
"sdp", "call", "max_seconds", "agent", "variables", "caller" ({"origin", "client_address"}, for records)}.
Replies:  {"ok": true, ...} or {"ok": false, "error": "busy" | "offer" | "not_found" | "unknown_agent" |
"expired" | "internal", "message", "status"?, "retry_after"?}; every reply carries the worker's "load".
A worker's hash says which agents it serves ("agents": comma-separated; empty: any).

Everything is rewritten by its owner on the next heartbeat, so a Redis restart (even one that loses all
data) costs at most a heartbeat or two once the server is back.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

# A call's key outlives its worker by this long: a call of a lost worker reads as ended/worker_lost.
CALL_KEY_TTL_S = 300
# An unread request or reply is garbage after this long.
MESSAGE_TTL_S = 60
# A signaling process silent this long is gone; longer than a worker's TTL, since what it is taken for
# dead costs only the webhooks it owes being sent by another too (their ids are the same).
SIGNALING_TTL_S = 10.0

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


class Keys:
    def __init__(self, prefix: str = "parley") -> None:
        self.prefix = prefix
        self.workers = f"{prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def inbox(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:inbox"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}:reply:{request_id}"

    def signaling(self, name: str) -> str:
        return f"{self.prefix}:signaling:{name}"


def connect(url: str, command_timeout_s: float = 15.0) -> aioredis.Redis:
    """A client that returns str, fails fast while Redis is down, and reconnects on the next command.

    `command_timeout_s` must be longer than any blocking pop made with it. Two quick retries replace
    the library's default back-off (seconds), so a stale pooled connection after a Redis restart is
    replaced at once and a Redis that is down is reported in well under a second."""
    client = aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=command_timeout_s,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.4, base=0.05), 2),
    )
    return cast(aioredis.Redis, client)


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class Backoff:
    """Exponential back-off with jitter between reconnection attempts: 0.1 s doubling up to `cap_s`."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 2.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.delay_s = first_s

    def reset(self) -> None:
        self.delay_s = self.first_s

    async def wait(self) -> None:
        await asyncio.sleep(self.delay_s * random.uniform(0.5, 1.0))
        self.delay_s = min(self.cap_s, self.delay_s * 2)
