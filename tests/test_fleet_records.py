"""A fleet's call records: `parley signaling` and two `parley worker` processes on one real Redis and one
real PostgreSQL. The three start at the same moment and migrate the empty database once between them;
calls made on both workers are read back through the signaling service, each with the worker it ran on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from parley.caller import Caller
from parley.emulator.server import GeminiEmulator
from parley.records.database import MIGRATION_LOCK, head_revision
from tests.postgres import Postgres
from tests.test_fleet import SPEECH, SPEECH_S, Fleet, RedisServer, redis_server
from tests.test_records import get, postgres, recorded
from tests.test_webhooks import SECRET, Receiver, receiver
from tests.waiting import wait_until

__all__ = ["postgres", "receiver", "redis_server"]  # the fixtures, used by name

TOKEN = "operator-token-for-the-fleet"
SHOP = "https://shop.example"
RAN_MIGRATION = "Running upgrade  -> "  # Alembic's line for each revision it applies


@pytest.fixture
async def fleet(redis_server: RedisServer, emulator: GeminiEmulator, tmp_path: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_server, emulator, tmp_path)
    try:
        yield fleet
    finally:
        await fleet.close()


async def migrations_waiting(db: asyncpg.Connection) -> int:
    """How many other connections are waiting for their turn to migrate (polling the advisory lock)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND state = 'idle in transaction' AND query LIKE '%pg_try_advisory_xact_lock%'"
    )
    return int(await db.fetchval(query))


async def talk(caller: Caller) -> None:
    caller.say(SPEECH)
    await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 30)


async def test_a_fleet_on_one_postgres_migrates_once_and_records_each_call_with_its_worker(
    fleet: Fleet, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alembic.runtime.migration")
    db = await asyncpg.connect(postgres.url)
    try:
        # Hold the migrations' turn while all three start, so that they race for it at the same moment.
        await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await fleet.spawn_workers("w1", "w2", extra_env={"PARLEY_DATABASE_URL": postgres.url})
        signaling = asyncio.create_task(
            fleet.start_signaling(
                database_url=postgres.url,
                admin_token=TOKEN,
                allowed_origins=[SHOP],
                record_client_address=True,
            )
        )
        deadline = asyncio.get_running_loop().time() + 60
        while await migrations_waiting(db) < 3:
            assert asyncio.get_running_loop().time() < deadline, "three processes waiting to migrate"
            assert not signaling.done(), signaling
            await asyncio.sleep(0.1)
        await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await asyncio.wait_for(signaling, 60)
        await fleet.registered("w1", "w2")
        versions = await db.fetch("SELECT version_num FROM alembic_version")
    finally:
        await db.close()
    assert [v["version_num"] for v in versions] == [head_revision()]
    ran = [line for w in ("w1", "w2") for line in fleet.log(w).splitlines() if RAN_MIGRATION in line]
    ran += [r.getMessage() for r in caplog.records if RAN_MIGRATION in r.getMessage()]
    assert len(ran) == 1, ran  # the first to get its turn migrated; the other two found it done

    # One call on each worker, from the shop's page, talked through and hung up.
    callers = [await fleet.call(origin=SHOP), await fleet.call(origin=SHOP)]
    states = [await fleet.state(c) for c in callers]
    placed = {state["call"]: state["worker"] for state in states}
    assert sorted(placed.values()) == ["w1", "w2"], placed
    await asyncio.gather(*(talk(c) for c in callers))
    for caller in callers:
        assert await caller.hang_up() == 204

    url = fleet.url
    records = {call_id: await recorded(url, call_id, TOKEN, timeout_s=30) for call_id in placed}
    status, page = await get(f"{url}/v1/calls?limit=10", TOKEN)
    assert status == 200 and page["next_cursor"] is None
    listed: dict[str, Any] = {c["id"]: c for c in page["calls"]}
    assert {call_id: c["worker"] for call_id, c in listed.items()} == placed
    for call_id, record in records.items():
        assert record["worker"] == placed[call_id] and record["end_reason"] == "hangup"
        assert record["turns"] >= 1 and record["tokens"]["output"]["AUDIO"] > 0
        assert (record["origin"], record["client_address"]) == (SHOP, "127.0.0.1")
        assert listed[call_id]["state"] == "ended"
        status, transcript = await get(f"{url}/v1/calls/{call_id}/transcript", TOKEN)
        assert status == 200 and transcript["id"] == call_id
        roles = {e["role"] for e in transcript["transcript"] if e["kind"] == "utterance"}
        assert roles == {"user", "agent"}, transcript
        # Records are the operator's: not without the token.
        assert (await get(f"{url}/v1/calls/{call_id}/transcript"))[0] == 401
    assert (await get(f"{url}/v1/calls"))[0] == 401
    await wait_until(lambda: all(not w.active for w in fleet.host.workers.values()), 10, "the calls to end")


async def test_the_record_of_a_call_on_a_killed_worker_ends_as_worker_lost(
    fleet: Fleet, postgres: Postgres, receiver: Receiver
) -> None:
    """The worker cannot end its calls' records when it is killed, nor send their call.ended: the
    signaling service, which sees its heartbeat stop, does both, so no record stays "live" for ever."""
    receiver.refuse_first = 0  # a worker's undelivered webhooks die with it: deliver them at once
    hooks = {"webhook_url": receiver.url, "webhook_secret": SECRET}
    await fleet.start_signaling(database_url=postgres.url, admin_token=TOKEN, **hooks)
    worker_env = {"PARLEY_DATABASE_URL": postgres.url, "PARLEY_WEBHOOK_URL": receiver.url}
    await fleet.start_workers("k1", "k2", extra_env={**worker_env, "PARLEY_WEBHOOK_SECRET": SECRET})
    callers = [await fleet.call(), await fleet.call()]
    placed = {(await fleet.state(c))["call"]: (await fleet.state(c))["worker"] for c in callers}
    assert sorted(placed.values()) == ["k1", "k2"], placed

    async def listed() -> dict[str, dict[str, Any]]:
        status, page = await get(f"{fleet.url}/v1/calls?limit=50", TOKEN)
        assert status == 200, page
        return {c["id"]: c for c in page["calls"] if c["id"] in placed}

    def announced(kind: str) -> dict[str, str]:
        return {e["call"]["id"]: e["call"].get("end_reason") for e in receiver.events if e["type"] == kind}

    deadline = time.monotonic() + 30
    while len(await listed()) < 2 or len(announced("call.started")) < 2:
        assert time.monotonic() < deadline, "both live calls' records and call.started"
        await asyncio.sleep(0.2)
    fleet.workers["k1"].send_signal(signal.SIGKILL)
    doomed = next(call for call, worker in placed.items() if worker == "k1")
    survivor = next(call for call, worker in placed.items() if worker == "k2")
    deadline = time.monotonic() + 60
    while (await listed())[doomed]["state"] != "ended":
        assert time.monotonic() < deadline, "the killed worker's call to be ended in its record"
        await asyncio.sleep(0.2)
    records = await listed()
    assert records[doomed]["end_reason"] == "worker_lost" and records[doomed]["duration_s"] > 0
    assert records[survivor]["state"] == "live"  # the other worker's call goes on, its record too
    for caller in callers:
        await caller.hang_up()
    ended = await recorded(fleet.url, survivor, TOKEN, timeout_s=30)
    assert ended["end_reason"] == "hangup"
    await wait_until(lambda: len(announced("call.ended")) == 2, 30, "call.ended of both calls, signed")
    assert announced("call.ended") == {doomed: "worker_lost", survivor: "hangup"}
    assert set(announced("call.started")) == {doomed, survivor} and receiver.bad_signatures == 0
