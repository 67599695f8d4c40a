"""Reading and writing call records. Every write is idempotent, so the writer may retry it freely."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.records.schema import call_events, calls

CALL_COLUMNS = frozenset(c.name for c in calls.columns)
EVENT_COLUMNS = frozenset(c.name for c in call_events.columns)
MAX_PAGE = 200


@dataclass
class CallUpdate:
    """Columns of one call's row: inserted, or merged into the row already there."""

    call_id: str
    columns: dict[str, Any]


@dataclass
class CallEvents:
    """Rows for the transcript and timeline; one already written is left as it is."""

    rows: list[dict[str, Any]]


@dataclass
class EndCallsOf:
    """The calls of a worker known to be gone, left open by it: ended at `ended_at` for `reason`."""

    worker: str
    ended_at: float
    reason: str
    ids: tuple[str, ...]  # those found open when it was known to be gone; no call started since


@dataclass
class DeleteBefore:
    """Retention: records of calls started before `cutoff` (Unix seconds)."""

    cutoff: float


Write = CallUpdate | CallEvents | EndCallsOf | DeleteBefore


@dataclass
class CallQuery:
    agent: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    cursor: str | None = None


class CursorError(ValueError):
    pass


def encode_cursor(started_at: float, call_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([started_at, call_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        started_at, call_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(started_at), str(call_id)
    except (ValueError, TypeError):
        raise CursorError("not a cursor this server gave out") from None


class CallStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def apply(self, writes: list[Write]) -> None:
        """All of `writes` in one transaction."""
        async with self.engine.begin() as connection:
            rows: list[dict[str, Any]] = []  # consecutive event rows go as one statement
            for write in writes:
                if isinstance(write, CallEvents):
                    rows += write.rows
                    continue
                if rows:
                    await self._apply(connection, CallEvents(rows))
                    rows = []
                await self._apply(connection, write)
            if rows:
                await self._apply(connection, CallEvents(rows))

    async def _apply(self, connection: AsyncConnection, write: Write) -> None:
        if isinstance(write, CallUpdate):
            columns = {k: v for k, v in write.columns.items() if k in CALL_COLUMNS and k != "id"}
            statement = self._insert(calls).values(id=write.call_id, **columns)
            if columns:
                statement = statement.on_conflict_do_update(index_elements=["id"], set_=columns)
            else:
                statement = statement.on_conflict_do_nothing(index_elements=["id"])
            await connection.execute(statement)
        elif isinstance(write, CallEvents):
            if write.rows:
                rows = [{k: v for k, v in row.items() if k in EVENT_COLUMNS} for row in write.rows]
                await connection.execute(
                    self._insert(call_events)
                    .values(rows)
                    .on_conflict_do_nothing(index_elements=["call_id", "seq"])
                )
        elif isinstance(write, EndCallsOf):
            await connection.execute(
                sa.update(calls)
                .where(
                    calls.c.worker == write.worker,
                    calls.c.ended_at.is_(None),
                    calls.c.id.in_(write.ids),
                )
                .values(
                    ended_at=write.ended_at,
                    end_reason=write.reason,
                    duration_s=write.ended_at - sa.func.coalesce(calls.c.started_at, write.ended_at),
                )
            )
        else:
            old = sa.select(calls.c.id).where(calls.c.started_at < write.cutoff)
            await connection.execute(sa.delete(call_events).where(call_events.c.call_id.in_(old)))
            await connection.execute(sa.delete(call_events).where(call_events.c.at < write.cutoff))
            await connection.execute(sa.delete(calls).where(calls.c.started_at < write.cutoff))

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(sa.select(calls).where(calls.c.id == call_id))).mappings().first()
        return dict(row) if row is not None else None

    async def open_calls_of(self, worker: str) -> list[str]:
        query = sa.select(calls.c.id).where(calls.c.worker == worker, calls.c.ended_at.is_(None))
        async with self.engine.connect() as connection:
            return [call_id for (call_id,) in (await connection.execute(query)).all()]

    async def events(self, call_id: str) -> list[dict[str, Any]]:
        query = sa.select(call_events).where(call_events.c.call_id == call_id).order_by(call_events.c.seq)
        async with self.engine.connect() as connection:
            return [dict(row) for row in (await connection.execute(query)).mappings()]

    async def list_calls(self, q: CallQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of calls, newest first, and the cursor of the next page (None on the last)."""
        limit = max(1, min(q.limit, MAX_PAGE))
        query = sa.select(calls).order_by(calls.c.started_at.desc(), calls.c.id.desc()).limit(limit + 1)
        if q.agent is not None:
            query = query.where(calls.c.agent == q.agent)
        if q.reason is not None:
            query = query.where(calls.c.end_reason == q.reason)
        if q.since is not None:
            query = query.where(calls.c.started_at >= q.since)
        if q.until is not None:
            query = query.where(calls.c.started_at < q.until)
        if q.cursor is not None:
            at, call_id = decode_cursor(q.cursor)
            query = query.where(
                sa.or_(calls.c.started_at < at, sa.and_(calls.c.started_at == at, calls.c.id < call_id))
            )
        async with self.engine.connect() as connection:
            rows = [dict(row) for row in (await connection.execute(query)).mappings()]
        following = None
        if len(rows) > limit:
            rows = rows[:limit]
            following = encode_cursor(rows[-1]["started_at"], rows[-1]["id"])
        return rows, following

    async def recordings_before(self, cutoff: float) -> list[str]:
        query = sa.select(calls.c.recording).where(
            calls.c.started_at < cutoff, calls.c.recording.is_not(None)
        )
        async with self.engine.connect() as connection:
            return [r for (r,) in (await connection.execute(query)).all() if r]
