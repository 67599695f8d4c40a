"""The database: URLs, the async engine, and migrations (Alembic, shipped inside this package).

URLs are SQLAlchemy's. `sqlite:///path` and `postgresql://...` name no async driver; they are given
aiosqlite and asyncpg, the drivers installed with Parley.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


class DatabaseUrlError(ValueError):
    pass


def async_url(url: str) -> str:
    """The URL with an async driver named; a clear error for one that is not a database URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"not a database URL: {safe_url(url)!r}") from None
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise DatabaseUrlError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///path or postgresql://..."
        )
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable>"


def make_engine(url: str, connect_timeout_s: float = 5.0) -> AsyncEngine:
    url = async_url(url)
    parsed = make_url(url)
    args: dict[str, Any] = {}
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        args["connect_args"] = {"timeout": connect_timeout_s}
    else:
        # A stopped or unreachable server fails each attempt quickly; the writer retries.
        args["connect_args"] = {"timeout": connect_timeout_s, "command_timeout": 3 * connect_timeout_s}
        args["pool_pre_ping"] = True
        args["pool_size"] = 2
        args["max_overflow"] = 2
    engine = create_async_engine(url, **args)
    if parsed.drivername.startswith("sqlite"):
        # Several processes (signaling, workers) may share one file: WAL lets readers go on while one writes.
        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # A commit appends to the WAL without an fsync of its own (the checkpoint syncs): the file
            # stays consistent, and a power cut loses at most the last commits. With an fsync per
            # commit, a 10-call server spent ~4 ms of CPU per call-second (+17 %) in the kernel.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(connect_timeout_s * 1000)}")
            cursor.close()

    return engine


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


MIGRATION_LOCK = 0x70617231  # PostgreSQL advisory lock key: one process of a fleet migrates at a time
LOCK_POLL_S = 0.2
LOCK_WAIT_S = 600.0  # how long a process waits for another's migration before it gives up


async def _migration_turn(connection: AsyncConnection, wait_s: float) -> None:
    """Wait for this process's turn to migrate: the advisory lock, held until the transaction ends.

    Tried, not waited on in one statement: the driver's command timeout would end a wait for another
    process's long migration, and the process would fail to start."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
    while not (await connection.execute(try_lock, {"key": MIGRATION_LOCK})).scalar():
        if loop.time() > deadline:
            raise TimeoutError(f"another process has been migrating the call records for {wait_s:.0f} s")
        await asyncio.sleep(LOCK_POLL_S)


async def upgrade(engine: AsyncEngine, attempts: int = 3, lock_wait_s: float = LOCK_WAIT_S) -> str | None:
    """Bring the schema to the newest revision; returns it.

    Signaling and every worker of a fleet migrate at start: on PostgreSQL they take turns (an advisory
    lock held for the transaction: the first migrates, the others then find the schema at its newest);
    on SQLite, one that lost the race to create the tables tries again and finds them made."""
    for attempt in range(attempts):
        try:
            async with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    await _migration_turn(connection, lock_wait_s)
                await connection.run_sync(_upgrade)
                return await connection.run_sync(_current)
        except (OperationalError, ProgrammingError):
            if attempt + 1 == attempts:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    return None
