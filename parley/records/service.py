"""The records of one process: the database, its writer, retention, and the calls as the API shows them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.records.cost import DEFAULT_PRICES, Prices
from parley.records.database import make_engine, safe_url, upgrade
from parley.records.outbox import WebhookOutbox
from parley.records.recorder import Announce, CallRecorder
from parley.records.shape import iso, present
from parley.records.store import CallQuery, CallStore, DeleteBefore, EndCallsOf
from parley.records.webhooks import WebhookSender
from parley.records.writer import RecordWriter

logger = logging.getLogger(__name__)

RETENTION_SWEEP_S = 3600.0
TRANSCRIPT_KINDS = frozenset({"utterance", "tool_call", "tool_result", "grounding"})


@dataclass
class RecordsOptions:
    database_url: str
    retention_days: float = 0.0  # 0: kept until deleted by hand
    queue_size: int = 10000
    recordings_dir: str | None = None  # where recordings are (None: recordings are off)
    prices: Prices = field(default_factory=lambda: DEFAULT_PRICES)
    retry_max_s: float = 10.0


class Records:
    def __init__(self, options: RecordsOptions) -> None:
        self.options = options
        self.engine = make_engine(options.database_url)
        self.store = CallStore(self.engine)
        self.outbox = WebhookOutbox(self.engine)  # webhooks not yet delivered
        self.writer = RecordWriter(self.store.apply, options.queue_size, retry_max_s=options.retry_max_s)
        self._sweeper: asyncio.Task[None] | None = None
        self.announce: Announce | None = None  # told "call.ended" of each call ended for a lost worker
        self.webhooks: WebhookSender | None = None  # takes over a lost worker's undelivered webhooks
        self._endings: set[asyncio.Task[Any]] = set()

    async def start(self, migrate: bool = True) -> None:
        if migrate:
            revision = await upgrade(self.engine)
            logger.info("call records in %s (schema %s)", safe_url(self.options.database_url), revision)
        self.writer.start()
        if self.options.retention_days > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="records-retention")

    async def stop(self) -> None:
        for task in list(self._endings):
            task.cancel()
        await asyncio.gather(*self._endings, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.writer.stop()
        await self.engine.dispose()

    def recorder(self, worker: str, model: str | None, announce: Announce | None = None) -> CallRecorder:
        def recording(call_id: str) -> str | None:
            return f"{call_id}.ogg" if self.options.recordings_dir else None

        return CallRecorder(
            self.writer.submit, worker, model, self.options.prices, recording, announce=announce
        )

    async def end_calls_of(
        self, worker: str, reason: str = "worker_lost", patience_s: float = 10.0
    ) -> list[str]:
        """End the records `worker` left open: it is gone (lost, or a new process under its name). Each
        is then announced as "call.ended". Await it before `worker` takes a call: a call it starts
        meanwhile could be taken for one of the dead process's. The database is asked for up to
        `patience_s`; returns the calls ended."""
        delay, deadline = 0.5, time.monotonic() + patience_s
        while True:
            try:
                ids = await self.store.open_calls_of(worker)
                break
            except Exception as exc:  # the database is down: the calls stay open until it answers
                if time.monotonic() + delay > deadline:
                    logger.warning("records of %s's calls left open: %s", worker, type(exc).__name__)
                    return []
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if not ids:
            return []
        logger.warning("%d calls of %s ended in the records as %s", len(ids), worker, reason)
        self.writer.submit(EndCallsOf(worker, time.time(), reason, tuple(ids)))
        if self.announce is not None and await self.writer.flush(patience_s):
            for call_id in ids:
                record = await self.describe(call_id)
                if record is not None:
                    self.announce("call.ended", record)
        return ids

    def end_calls_of_soon(self, worker: str) -> None:
        """A worker that died: end_calls_of in a task of its own, patient for 10 minutes (the watch of
        the signaling service, or of `serve --processes`' front door), and, with `webhooks`, take over
        the webhooks it had not delivered."""
        task = asyncio.create_task(self.end_calls_of(worker, patience_s=600), name=f"end-calls-of-{worker}")
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)
        if self.webhooks is not None:
            adopting = asyncio.create_task(self.webhooks.adopt(worker), name=f"webhooks-of-{worker}")
            self._endings.add(adopting)
            adopting.add_done_callback(self._endings.discard)

    # --- retention ------------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> None:
        """Delete records and recordings older than the retention period."""
        cutoff = (now or time.time()) - self.options.retention_days * 86400
        if self.options.recordings_dir:
            names = set(await self.store.recordings_before(cutoff))
            await asyncio.to_thread(delete_recordings, Path(self.options.recordings_dir), names, cutoff)
        self.writer.submit(DeleteBefore(cutoff))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database may be down: the next sweep catches up
                logger.warning("records retention sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(RETENTION_SWEEP_S)

    # --- reading, shaped for the API --------------------------------------------------------------

    async def describe(self, call_id: str) -> dict[str, Any] | None:
        row = await self.store.get_call(call_id)
        return None if row is None else present(row, full=True)

    async def list_calls(self, **filters: Any) -> dict[str, Any]:
        """A page of calls: agent, reason, since, until (Unix seconds), limit, cursor (CallQuery's fields)."""
        rows, cursor = await self.store.list_calls(CallQuery(**filters))
        return {"calls": [present(row, full=False) for row in rows], "next_cursor": cursor}

    async def transcript(self, call_id: str) -> dict[str, Any] | None:
        row = await self.store.get_call(call_id)
        if row is None:
            return None
        transcript: list[dict[str, Any]] = []
        timeline: list[dict[str, Any]] = []
        for event in await self.store.events(call_id):
            at = event["at"]
            entry: dict[str, Any] = {"at": iso(at), "t": round(at, 3), "kind": event["kind"]}
            if event["kind"] == "utterance":
                entry.update(role=event["role"], text=event["text"], interrupted=bool(event["interrupted"]))
            elif event["data"]:
                entry.update(event["data"])
            (transcript if event["kind"] in TRANSCRIPT_KINDS else timeline).append(entry)
        return {"id": call_id, "transcript": transcript, "timeline": timeline}

    async def recording(self, call_id: str) -> Path | None:
        folder = self.options.recordings_dir
        row = await self.store.get_call(call_id)
        if folder is None or row is None or not row.get("recording"):
            return None
        path = Path(folder) / Path(str(row["recording"])).name
        return path if await asyncio.to_thread(path.is_file) else None


def delete_recordings(folder: Path, names: set[str], cutoff: float) -> None:
    """Recordings of the calls named, and any older than `cutoff` (Unix seconds)."""
    for path in folder.glob("*.ogg") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            if path.name in names or path.stat().st_mtime < cutoff:
                path.unlink()
