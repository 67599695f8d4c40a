"""Webhooks: `call.started` and `call.ended` (with the record) POSTed as JSON, signed, off the media path.

Each delivery carries `Parley-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the HMAC (key:
PARLEY_WEBHOOK_SECRET) is over `"<t>." + body`. A receiver recomputes it, compares in constant time and
refuses a `t` more than a few minutes old, so a captured delivery cannot be replayed later (see
`verify_signature`, and the snippet in README.md). A delivery that fails is retried with back-off
(1 s doubling, up to `attempts` tries, each re-signed with a fresh time), then dropped and counted; a
full queue drops and counts too. Nothing here ever waits on a call's behalf.

With an outbox (the records database's, `use_outbox`), each webhook is also kept there from its
submission until it is delivered or given up on, under the sender's `owner` name: a process that is
killed leaves its undelivered webhooks there, for the next process under its name (`resume`) or the
front door that saw it die (`adopt`). A webhook may then arrive twice; its `id` says it is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Parley-Signature"
TOLERANCE_S = 300


def sign(secret: str, body: bytes, t: int) -> str:
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: float = TOLERANCE_S) -> bool:
    """True when `header` signs `body` with `secret` and is at most `tolerance_s` old."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Outbox(Protocol):
    async def keep(self, owner: str, event: dict[str, Any]) -> None: ...
    async def done(self, event_id: str) -> None: ...
    async def claim(self, owner: str, claimant: str) -> list[dict[str, Any]]: ...
    async def owners(self, prefix: str) -> set[str]: ...


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: str | None,
        max_queue: int = 1000,
        attempts: int = 8,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._secret = secret
        self.max_queue = max_queue
        self.attempts = attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        # each webhook with its write to the outbox (awaited before the first attempt, so a delivery's
        # removal from the outbox never comes before its keeping)
        self._queue: deque[tuple[dict[str, Any], asyncio.Task[None] | None]] = deque()
        self._ready = asyncio.Event()
        self.outbox: Outbox | None = None
        self.owner = ""
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.dropped = 0  # given up after every attempt failed, or the queue was full
        self.failures = 0  # failed attempts

    def submit(self, event_type: str, call: dict[str, Any]) -> bool:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return False
        event = {"id": uuid.uuid4().hex, "type": event_type, "created": round(time.time(), 3), "call": call}
        kept = None
        if self.outbox is not None:
            kept = asyncio.create_task(self.outbox.keep(self.owner, event), name="webhook-keep")
        self._queue.append((event, kept))
        self._ready.set()
        return True

    def use_outbox(self, outbox: Outbox, owner: str) -> None:
        self.outbox, self.owner = outbox, owner

    async def resume(self) -> int:
        """Queue what a dead process under this sender's name left in the outbox; returns how many."""
        return await self.adopt(self.owner)

    async def adopt(self, owner: str) -> int:
        """Take over the undelivered webhooks of `owner` (a process that died); returns how many."""
        if self.outbox is None:
            return 0
        try:
            left = await self.outbox.claim(owner, self.owner)
        except Exception as exc:  # the database is down: they wait there for the next claim
            logger.warning("could not read the webhook outbox: %s", type(exc).__name__)
            return 0
        self._queue.extend((event, None) for event in left)
        if left:
            logger.warning("%d undelivered webhooks of %s queued again", len(left), owner)
            self._ready.set()
        return len(left)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._queue:
                    self._ready.set()
                    await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # what is left undelivered is at least in the outbox, for the next process under this name
        keeping = [kept for _, kept in self._queue if kept is not None]
        await asyncio.gather(*keeping, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                event, kept = self._queue[0]
                if kept is not None:
                    await self._outbox_call(kept)
                delivered = await self._deliver(session, event)
                self._queue.popleft()
                if self.outbox is not None:
                    await self._outbox_call(self.outbox.done(event["id"]))
                if delivered:
                    self.delivered += 1
                else:
                    self.dropped += 1
                    logger.warning(
                        "webhook %s for call %s dropped after %d attempts",
                        event["type"],
                        str(event["call"].get("id", ""))[:8],
                        self.attempts,
                    )

    async def _outbox_call(self, call: Any) -> None:
        """The outbox is a safety net: a database that fails it costs the durability, not the webhook."""
        try:
            await call
        except Exception as exc:
            logger.warning("webhook outbox: %s", type(exc).__name__)

    async def _deliver(self, session: aiohttp.ClientSession, event: dict[str, Any]) -> bool:
        body = json.dumps(event, separators=(",", ":")).encode()
        delay = self.retry_initial_s
        for attempt in range(self.attempts):
            headers = {"Content-Type": "application/json", "User-Agent": "parley-webhooks"}
            if self._secret:
                headers[SIGNATURE_HEADER] = sign(self._secret, body, int(time.time()))
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = type(exc).__name__
            self.failures += 1
            if attempt == 0:
                logger.info("webhook %s: %s; retrying with back-off", event["type"], problem)
            if attempt + 1 < self.attempts:
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
        return False


class WebhookMetrics(Collector):
    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        s = self.sender
        return [
            CounterMetricFamily("parley_webhooks_delivered", "webhook deliveries answered 2xx", s.delivered),
            CounterMetricFamily("parley_webhooks_dropped", "webhooks given up on or not queued", s.dropped),
            CounterMetricFamily("parley_webhooks_failures", "failed webhook attempts (retried)", s.failures),
            GaugeMetricFamily("parley_webhooks_queued", "webhooks waiting to be delivered", len(s._queue)),
        ]
