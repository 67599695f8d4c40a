"""Writes off the media path: a bounded queue and one writer task that retries with back-off.

`submit` never blocks and never raises: a call's observer hands its writes here and returns. When the
database is slow or down, writes wait in the queue (in order) and are retried until they land; only a
write that finds the queue full is lost, and it is counted (`dropped`). Writes are idempotent (upserts,
keyed inserts), so a batch that failed halfway is simply applied again.

A write the database refuses for what it holds (a constraint, a value it cannot store, such as a NUL
character in PostgreSQL text) would fail the same way forever and hold up every write behind it: the
batch is applied again one write at a time, and each write refused that way is dropped and counted
(`rejected`). Only failures of the connection itself (the database down, a timeout) are waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc

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
        self.rejected = 0  # writes the database refused for their content (dropped, not retried)
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
                if refused_for_content(exc):
                    await self._apply_one_by_one(len(batch))
                    continue
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
            self._written(len(batch))
            if self.failing_since is not None:
                logger.warning("%s: writing again after %.1f s", self.name, loop.time() - self.failing_since)
                self.failing_since = None
            delay = self.retry_initial_s

    async def _apply_one_by_one(self, count: int) -> None:
        """The first `count` writes queued, each alone: those refused for their content are dropped."""
        for _ in range(count):
            write = self._queue[0]
            try:
                await self._apply([write])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not refused_for_content(exc):
                    return  # the connection failed meanwhile: the main loop waits it out
                self._queue.popleft()
                self.rejected += 1
                logger.warning(
                    "%s: the database refused a write of %s (%s: %s); dropped",
                    self.name,
                    _what(write),
                    type(exc).__name__,
                    _short(exc),
                )
                if not self._queue:
                    self._idle.set()
                continue
            self._written(1)

    def _written(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()
        self.written += count
        if not self._queue:
            self._idle.set()

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


# SQLSTATE classes of a statement refused for itself: data exception, integrity constraint violation,
# syntax error or access rule violation, feature not supported. The others (connection exception,
# insufficient resources, operator intervention, transaction rollback...) pass with time.
CONTENT_SQLSTATE_CLASSES = frozenset({"22", "23", "42", "0A"})


def refused_for_content(exc: Exception) -> bool:
    """True when the database answered and refused the write itself; False when it could not be reached.

    PostgreSQL says which with the error's SQLSTATE (asyncpg's own errors reach SQLAlchemy as a generic
    DBAPIError, so the class alone does not tell); SQLite's driver with DB-API classes: IntegrityError
    and DataError are about the values, OperationalError about the database (locked, unreachable). A
    value that cannot even be bound (StatementError outside DB-API) is the write's too."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        state = _sqlstate(exc)
        if state is not None:
            return state[:2] in CONTENT_SQLSTATE_CLASSES
        return isinstance(
            exc, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError | sa_exc.NotSupportedError
        )
    return isinstance(exc, sa_exc.StatementError | TypeError | ValueError)


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    for error in (exc.orig, exc.orig.__cause__ if exc.orig is not None else None):
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


def _what(write: Write) -> str:
    """A write named without its content (transcripts are personal data: they stay out of the log)."""
    call_id = getattr(write, "call_id", None)
    if call_id is None and getattr(write, "rows", None):
        call_id = write.rows[0].get("call_id")  # type: ignore[union-attr]
    return f"{type(write).__name__} of call {call_id}" if call_id else type(write).__name__


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


class WriterMetrics(Collector):
    """parley_records_* for /metrics: written, dropped (queue full), rejected, failed attempts, queued now."""

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
            CounterMetricFamily(
                f"{p}_rejected", "record writes the database refused for their content (dropped)", w.rejected
            ),
            CounterMetricFamily(f"{p}_write_failures", "failed write attempts (each retried)", w.failures),
            GaugeMetricFamily(f"{p}_queued", "record writes waiting for the database", w.queued),
        ]
