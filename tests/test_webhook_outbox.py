"""Webhooks survive the process that owed them: kept in the records database's outbox until delivered,
sent by the next process under the dead one's name, by the front door of `serve --processes` that
saw its media process die, or by another `parley signaling`. Real processes, a real SQLite file, a
real Redis, a real receiver, real SIGKILLs."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from parley.caller import Caller
from parley.fleet.wire import SIGNALING_TTL_S
from parley.processes import start_signaling
from parley.settings import Settings
from tests.test_fleet import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.test_lifecycle import ROOT, free_port
from tests.test_media_processes import SPEECH, converse, serve_env
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401 - the fixture
from tests.waiting import interrupt, wait_until

REFUSE_ALL = 10**9


def outbox(db: Path) -> list[tuple[str, str]]:
    """(id, owner) of each webhook the outbox holds, read from the file as an operator would."""
    with sqlite3.connect(db) as connection:
        return list(connection.execute("SELECT id, owner FROM webhook_outbox ORDER BY created_at"))


async def start_serve(db: Path, receiver: Receiver, *args: str) -> tuple[asyncio.subprocess.Process, str]:  # noqa: F811
    port = free_port()
    env = serve_env(db, receiver.url)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "parley.cli", "serve", "--port", str(port), *args), cwd=ROOT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
                health: dict[str, Any] = await response.json()
                if all(p["ready"] for p in health.get("processes", [])):
                    return process, url
        except aiohttp.ClientError:
            pass
        assert process.returncode is None, "parley serve exited at start"
        await asyncio.sleep(0.1)
    raise AssertionError("parley serve did not start within 60 s")


def delivered(receiver: Receiver) -> dict[str, str]:  # noqa: F811
    return {e["id"]: e["type"] for e in receiver.events}


async def test_webhooks_owed_by_a_killed_serve_are_sent_by_the_next_one(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    db = tmp_path / "records.db"
    receiver.refuse_first = REFUSE_ALL  # the receiver is down while the call happens
    serve, url = await start_serve(db, receiver)
    try:
        caller = Caller(url)
        await caller.connect()
        caller.say(SPEECH[:8000])
        await asyncio.sleep(0.5)
        assert await caller.hang_up() == 204
        await wait_until(lambda: len(outbox(db)) == 2, 20, "call.started and call.ended in the outbox")
        owed = outbox(db)
        assert {owner for _, owner in owed} == {"serve"}
        serve.send_signal(signal.SIGKILL)  # no clean-up: what it owed is only in the database
        await serve.wait()
    finally:
        if serve.returncode is None:
            serve.kill()
    assert receiver.events == []

    receiver.refuse_first = 0  # the receiver is back
    again, _ = await start_serve(db, receiver)
    try:
        await wait_until(lambda: len(receiver.events) == 2, 30, "the dead process's two webhooks")
        assert delivered(receiver) == {owed[0][0]: "call.started", owed[1][0]: "call.ended"}
        assert receiver.events[1]["call"]["end_reason"] == "hangup" and receiver.bad_signatures == 0
        await wait_until(lambda: outbox(db) == [], 10, "the outbox to be empty once they are delivered")
    finally:
        await interrupt(again)


async def test_the_front_door_sends_what_a_killed_media_process_owed(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    db = tmp_path / "records.db"
    receiver.refuse_first = REFUSE_ALL
    pool, url = await start_serve(db, receiver, "--processes", "2")
    try:
        caller = Caller(url)
        await converse(caller)
        holder = (await caller.call_state())["worker"]
        await caller.hang_up()
        await wait_until(lambda: len(outbox(db)) == 2, 20, "the call's two webhooks in the outbox")
        assert {owner for _, owner in outbox(db)} == {holder}
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
            pid = next(p["pid"] for p in (await response.json())["processes"] if p["worker"] == holder)
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: {o for _, o in outbox(db)} == {"serve"}, 20, "the front door to take them")
        receiver.refuse_first = 0
        await wait_until(lambda: len(receiver.events) == 2, 60, "the two webhooks, from the front door")
        assert sorted(delivered(receiver).values()) == ["call.ended", "call.started"]
        await wait_until(lambda: outbox(db) == [], 10, "the outbox to be empty")
    finally:
        await interrupt(pool)


async def test_webhooks_a_stopped_signaling_process_owed_are_sent_by_another(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two `parley signaling` processes on one Redis and one database. The first owes a webhook (a lost
    worker's call.ended, say) when it is stopped with the receiver down: it stays in the outbox under
    the first's name, which no process is started under again (it has the host, pid and a random
    part). The second sends it once the first is gone from Redis, and not while the first lives."""
    db = tmp_path / "records.db"
    receiver.refuse_first = REFUSE_ALL

    def settings() -> Settings:
        return Settings(
            host="127.0.0.1",
            port=0,
            redis_url=redis_server.url,
            database_url=f"sqlite:///{db}",
            webhook_url=receiver.url,
            webhook_secret=SECRET,
        )

    first = await start_signaling(settings())
    second = await start_signaling(settings())
    try:
        assert first.webhooks is not None
        first.webhooks.submit("call.ended", {"id": "a-call-of-a-lost-worker", "end_reason": "worker_lost"})
        await wait_until(lambda: len(outbox(db)) == 1, 20, "the webhook in the outbox")
        [(event_id, owner)] = outbox(db)
        assert owner == first.host.name
        await asyncio.sleep(2.5 * SIGNALING_TTL_S / 2)  # two of the second's looks, at least
        assert outbox(db) == [(event_id, first.host.name)]  # a live process's debts are its own
    finally:
        await first.stop()
    receiver.refuse_first = 0
    try:
        await wait_until(lambda: len(receiver.events) == 1, 60, "the stopped process's webhook, sent")
        assert receiver.events[0]["id"] == event_id and receiver.bad_signatures == 0
        assert receiver.events[0]["call"]["end_reason"] == "worker_lost"
        await wait_until(lambda: outbox(db) == [], 10, "the outbox to be empty once it is delivered")
    finally:
        await second.stop()
