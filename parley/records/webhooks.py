"""Webhooks: `call.started` and `call.ended` (with the record) POSTed as JSON, signed, off the media path.

Each delivery carries `Parley-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the HMAC (key:
PARLEY_WEBHOOK_SECRET) is over `"<t>." + body`. A receiver recomputes it, compares in constant time and
refuses a `t` more than a few minutes old, so a captured delivery cannot be replayed later (see
`verify_signature`, and the snippet in README.md). A delivery that fails is retried with back-off
(1 s doubling, up to `attempts` tries, each re-signed with a fresh time), then dropped and counted; a
full queue drops and counts too. Nothing here ever waits on a call's behalf.
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
from typing import Any

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
        self._queue: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.dropped = 0  # given up after every attempt failed, or the queue was full
        self.failures = 0  # failed attempts

    def submit(self, event_type: str, call: dict[str, Any]) -> bool:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return False
        self._queue.append(
            {"id": uuid.uuid4().hex, "type": event_type, "created": round(time.time(), 3), "call": call}
        )
        self._ready.set()
        return True

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

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                event = self._queue[0]
                delivered = await self._deliver(session, event)
                self._queue.popleft()
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
