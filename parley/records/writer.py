"""Writes off the media path: a bounded queue and one writer task that retries with back-off.

`submit` never blocks and never raises: a call's observer hands its writes here and returns. When the
database is slow or down, writes wait in the queue (in order) and are retried until they land; only a
write that finds the queue full is lost, and it is counted (`dropped`). Writes are idempotent (upserts,
keyed inserts), so a batch that failed halfway is simply applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from parley.records.store import Write

logger = logging.getLogger(__name__)

BATCH = 200


class RecordWriter:
    def __init__(
        self,
        apply: Callable[[list[Write]], Awaitable[None]],
        max_queue: int = 10000,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        name: str = "records",
    ) -> None:
        self._apply = apply
        self.max_queue = max_queue
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.name = name
        self._queue: deque[Write] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing waits to be written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0  # attempts that failed (each retried)
        self.failing_since: float | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, write: Write) -> bool:
        """Queue a write; False (and counted) when the queue is full."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "%s: the write queue is full (%d); %d writes lost",
                    self.name,
                    self.max_queue,
                    self.dropped,
                )
            return False
        self._queue.append(write)
        self._idle.clear()
        self._ready.set()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.retry_initial_s
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                await self._apply(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failing_since is None:
                    self.failing_since = loop.time()
                    logger.warning(
                        "%s: the database refused a write (%s: %s); retrying with back-off",
                        self.name,
                        type(exc).__name__,
                        _short(exc),
                    )
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            for _ in batch:
                self._queue.popleft()
            self.written += len(batch)
            if not self._queue:
                self._idle.set()
            if self.failing_since is not None:
                logger.warning("%s: writing again after %.1f s", self.name, loop.time() - self.failing_since)
                self.failing_since = None
            delay = self.retry_initial_s

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is written (True), or `timeout_s` passes (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self._queue

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to `timeout_s`), then stop; what is left is logged as lost."""
        if self._task is None:
            return
        await self.flush(timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._queue:
            logger.warning("%s: %d writes not written at shutdown", self.name, len(self._queue))


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


class WriterMetrics(Collector):
    """parley_records_* for /metrics: written, dropped (queue full), failed attempts, queued now."""

    def __init__(self, writer: RecordWriter, prefix: str = "parley_records") -> None:
        self.writer = writer
        self.prefix = prefix

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        w, p = self.writer, self.prefix
        return [
            CounterMetricFamily(f"{p}_written", "record writes that reached the database", w.written),
            CounterMetricFamily(f"{p}_dropped", "record writes lost because the queue was full", w.dropped),
            CounterMetricFamily(f"{p}_write_failures", "failed write attempts (each retried)", w.failures),
            GaugeMetricFamily(f"{p}_queued", "record writes waiting for the database", w.queued),
        ]
