"""Call records: a real call leaves a row, a transcript and a timeline that outlive the server, read
through the operator API; the database stopped mid-call delays and fails nothing and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from parley.agent.metrics import parse_histograms
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.records.database import (
    MIGRATION_LOCK,
    DatabaseUrlError,
    async_url,
    head_revision,
    make_engine,
    upgrade,
)
from parley.records.service import Records, RecordsOptions
from parley.records.store import CallEvents, CallUpdate
from parley.records.writer import RecordWriter, WriterMetrics
from parley.server import Running, start
from tests.conftest import make_settings
from tests.postgres import Postgres
from tests.test_lifecycle import ROOT, free_port
from tests.waiting import interrupt, wait_until

SPEECH = load_wav("tests/data/speech.wav")
SPEECH_S = SPEECH.size / RATE


async def get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else await response.read()
        return response.status, body


async def talk(url: str, **caller_args: Any) -> str:
    """One call: a sentence, the agent's answer, hang up. Returns the call's id."""
    caller = Caller(url, **caller_args)
    await caller.connect()
    try:
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 20)
    finally:
        await caller.hang_up()
    assert caller.call_url is not None
    return caller.call_url.rstrip("/").rsplit("/", 1)[1]


async def recorded(url: str, call_id: str, token: str | None = None, timeout_s: float = 20) -> dict[str, Any]:
    """The call's record, once it has ended and been written."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while not found and time.monotonic() < deadline:
        status, body = await get(f"{url}/v1/calls/{call_id}", token)
        if status == 200 and body.get("state") == "ended" and body.get("end_reason"):
            found.update(body)
        else:
            await asyncio.sleep(0.1)
    assert found, f"no ended record of {call_id} within {timeout_s} s"
    return found


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/records.db"


async def test_a_call_leaves_a_record_and_transcript_that_outlive_the_server(
    emulator: GeminiEmulator, db_url: str
) -> None:
    first = await start(make_settings(database_url=db_url), emulator=emulator)
    try:
        call_id, record, transcript = await call_and_read(f"http://127.0.0.1:{first.port}")
    finally:
        await first.stop()
    assert record["end_reason"] == "hangup"
    # A new server on the same database still answers for the call.
    again = await start(make_settings(database_url=db_url), emulator=emulator)
    try:
        status, body = await get(f"http://127.0.0.1:{again.port}/v1/calls/{call_id}")
        assert status == 200 and body["id"] == call_id and body["end_reason"] == "hangup"
        assert body["summary"]["gemini"]["tokens"]["total"] > 0
        status, body = await get(f"http://127.0.0.1:{again.port}/v1/calls/{call_id}/transcript")
        assert status == 200 and body == transcript
    finally:
        await again.stop()


async def call_and_read(url: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    call_id = await talk(url)
    record = await recorded(url, call_id)
    assert record["end_reason"] == "hangup" and record["turns"] >= 1 and record["worker"] == "serve"
    assert record["duration_s"] > SPEECH_S / 2 and record["started_at"].endswith("Z")
    assert record["connected_at"] is not None and record["client_address"] is None  # not asked to keep it
    assert record["gemini"]["connections"] == 1 and record["gemini"]["reconnects"] == 0
    assert record["tokens"]["input"]["AUDIO"] > 0 and record["tokens"]["output"]["AUDIO"] > 0
    assert record["cost_usd"] > 0
    latency = record["latency"]
    assert latency["uplink"]["p50"] >= 0 and latency["downlink"]["count"] > 0
    assert "response" in latency and "bargein_stop" in latency and "voice_to_voice" in latency

    status, transcript = await get(f"{url}/v1/calls/{call_id}/transcript")
    assert status == 200
    said = [e for e in transcript["transcript"] if e["kind"] == "utterance"]
    assert {e["role"] for e in said} == {"user", "agent"}, said
    assert all(e["text"] and e["at"].endswith("Z") for e in said)
    assert [e["kind"] for e in transcript["timeline"]][:3] == ["connected", "turn_start", "turn_end"]

    assert record["agent"] == "default" and record["model"]
    status, page = await get(f"{url}/v1/calls?reason=hangup&agent=default&limit=10")
    assert status == 200 and [c["id"] for c in page["calls"]] == [call_id]
    status, page = await get(f"{url}/v1/calls?agent=sales")
    assert status == 200 and page["calls"] == []
    status, page = await get(f"{url}/v1/calls?reason=no_media")
    assert status == 200 and page["calls"] == []
    status, _ = await get(f"{url}/v1/calls/{call_id}/recording")
    assert status == 404  # recordings are off unless PARLEY_RECORD_AUDIO is on
    return call_id, record, transcript


@pytest.fixture
def operator_token() -> str:
    return "operator-token-for-tests"


async def test_records_need_the_operator_token_when_one_is_set(
    emulator: GeminiEmulator, db_url: str, operator_token: str
) -> None:
    running = await start(make_settings(database_url=db_url, admin_token=operator_token), emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    try:
        status, body = await get(f"{url}/v1/calls")
        assert status == 401 and "operator token" in body["error"]
        status, body = await get(f"{url}/v1/calls", "wrong")
        assert status == 401
        status, body = await get(f"{url}/v1/calls", operator_token)
        assert status == 200 and body == {"calls": [], "next_cursor": None}
        for query, word in (
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("since=yesterday", "since"),
            ("cursor=garbage", "cursor"),
        ):
            status, body = await get(f"{url}/v1/calls?{query}", operator_token)
            assert status == 400 and word in body["error"], (query, body)
        status, body = await get(f"{url}/v1/calls/nosuchcall/transcript", operator_token)
        assert status == 404
    finally:
        await running.stop()


async def test_a_page_of_calls_is_newest_first_and_filtered(tmp_path: Path) -> None:
    records = Records(RecordsOptions(database_url=f"sqlite:///{tmp_path}/r.db"))
    await records.start()
    try:
        for i in range(5):
            agent = "sales" if i % 2 else "support"
            columns = {"started_at": 1000.0 + i, "agent": agent, "end_reason": "hangup"}
            records.writer.submit(CallUpdate(f"call{i}", columns))
        assert await records.writer.flush(10)
        seen: list[str] = []
        cursor = None
        while True:
            page = await records.list_calls(limit=2, cursor=cursor)
            seen += [c["id"] for c in page["calls"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["call4", "call3", "call2", "call1", "call0"]
        page = await records.list_calls(agent="sales", reason="hangup", since=1001.0, until=1003.5)
        assert [c["id"] for c in page["calls"]] == ["call3", "call1"]
        # Retention: everything started before the cut goes, recordings with it.
        records.options.retention_days = 1
        await records.sweep(now=1002.5 + 86400)
        assert await records.writer.flush(10)
        assert [c["id"] for c in (await records.list_calls())["calls"]] == ["call4", "call3"]
    finally:
        await records.stop()


async def test_a_full_queue_counts_what_it_loses_and_keeps_what_fits() -> None:
    written: list[object] = []
    up = asyncio.Event()

    async def apply(batch: list[Any]) -> None:
        if not up.is_set():
            raise ConnectionRefusedError("database down")
        written.extend(batch)

    writer = RecordWriter(apply, max_queue=3, retry_initial_s=0.01, retry_max_s=0.05)
    writer.start()
    try:
        accepted = [writer.submit(CallUpdate(f"c{i}", {})) for i in range(5)]
        assert accepted == [True, True, True, False, False] and writer.dropped == 2
        await wait_until(lambda: writer.failures >= 2, 10, "retries while the database is down")
        up.set()
        assert await writer.flush(10)
        assert [w.call_id for w in written] == ["c0", "c1", "c2"]  # type: ignore[attr-defined]
    finally:
        await writer.stop()


def test_database_urls_get_their_async_driver() -> None:
    assert async_url("sqlite:///parley.db") == "sqlite+aiosqlite:///parley.db"
    assert async_url("postgresql://u:p@db/parley") == "postgresql+asyncpg://u:p@db/parley"
    assert async_url("postgresql+asyncpg://db/parley") == "postgresql+asyncpg://db/parley"
    for bad in ("mysql://db/x", "not a url"):
        with pytest.raises(DatabaseUrlError):
            async_url(bad)


# --- PostgreSQL, stopped in the middle of a call -----------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
async def pg_server(emulator: GeminiEmulator, postgres: Postgres) -> AsyncIterator[Running]:
    running = await start(make_settings(database_url=postgres.url), emulator=emulator)
    assert running.records is not None
    running.records.writer.retry_max_s = 0.5  # come back quickly once the database does
    try:
        yield running
    finally:
        await running.stop()


async def test_the_database_stopped_mid_call_delays_and_fails_nothing_and_loses_nothing(
    pg_server: Running, postgres: Postgres
) -> None:
    url = f"http://127.0.0.1:{pg_server.port}"
    assert pg_server.records is not None
    writer = pg_server.records.writer
    caller = Caller(url)
    await caller.connect()
    try:
        await wait_until(lambda: writer.written >= 2, 20, "the call's first rows to be written")
        await asyncio.to_thread(postgres.stop)
        caller.say(SPEECH)
        await caller.wait_for_event("agent_turn_end", timeout_s=SPEECH_S + 30)
        status, body = await get(f"{url}/v1/calls")
        assert status == 503 and "unavailable" in body["error"] and "parley@" not in body["error"]
    finally:
        await caller.hang_up()
    # The call went on as ever: the answer heard as soon as usual, the call ended as it was ended.
    heard = caller.turns()[0]["response_ms"]
    assert heard is not None and heard < 3000, caller.turns()
    await wait_until(lambda: not pg_server.worker.calls, 10, "the call to end")
    await wait_until(lambda: writer.failures and writer.queued, 20, "writes waiting for the database")
    metrics = parse_histograms((await get(f"{url}/metrics"))[1].decode())
    assert metrics["parley_records_queued"] > 0 and metrics["parley_records_dropped_total"] == 0
    await asyncio.to_thread(postgres.start)
    record = await recorded(url, caller.call_url.rsplit("/", 1)[1], timeout_s=30)  # type: ignore[union-attr]
    assert record["end_reason"] == "hangup" and record["turns"] >= 1
    status, transcript = await get(f"{url}/v1/calls/{record['id']}/transcript")
    assert status == 200 and {e["role"] for e in transcript["transcript"] if e["kind"] == "utterance"} == {
        "user",
        "agent",
    }
    assert writer.dropped == 0


async def test_retention_deletes_old_recordings_with_their_records(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    url = f"sqlite:///{tmp_path}/r.db"
    records = Records(RecordsOptions(database_url=url, recordings_dir=str(folder)))
    await records.start()
    records.options.retention_days = 30  # swept by hand below, not by the hourly task
    try:
        now = time.time()
        for name, started in (("old", now - 40 * 86400), ("new", now - 86400)):
            records.writer.submit(CallUpdate(name, {"started_at": started, "recording": f"{name}.ogg"}))
            (folder / f"{name}.ogg").write_bytes(b"OggS")
        assert await records.writer.flush(10)
        await records.sweep(now)
        assert await records.writer.flush(10)
        assert sorted(p.name for p in folder.iterdir()) == ["new.ogg"]
        assert await records.describe("old") is None and await records.describe("new") is not None
        assert await records.recording("new") == folder / "new.ogg"
    finally:
        await records.stop()


async def test_a_process_waits_out_another_ones_long_migration(postgres: Postgres) -> None:
    """Waiting for the migrations' turn is not cut short by the driver's command timeout (1.5 s here)."""
    holder = await asyncpg.connect(postgres.url)
    engine = make_engine(postgres.url, connect_timeout_s=0.5)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)  # another process migrating
        waiting = asyncio.create_task(upgrade(engine))
        await asyncio.sleep(3)  # twice the command timeout: the wait must outlast it
        assert not waiting.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        assert await asyncio.wait_for(waiting, 30) == head_revision()
    finally:
        await engine.dispose()
        await holder.close()


async def test_a_write_the_database_refuses_is_dropped_and_counted_and_the_rest_still_land(
    postgres: Postgres,
) -> None:
    """PostgreSQL refuses a NUL character in text: that one write would fail forever; it must not hold
    up the records behind it."""
    records = Records(RecordsOptions(database_url=postgres.url))
    await records.start()
    try:
        now = time.time()
        writer = records.writer
        writer.submit(CallUpdate("nul-before", {"started_at": now, "agent": "default"}))
        said = {"call_id": "nul-before", "at": now, "kind": "utterance", "role": "agent"}
        writer.submit(CallEvents([{**said, "seq": 0, "text": "fine"}]))
        writer.submit(CallUpdate("nul-bad", {"started_at": now, "agent": "default\x00"}))
        writer.submit(CallEvents([{**said, "seq": 1, "text": "also fine"}]))
        writer.submit(CallUpdate("nul-after", {"started_at": now + 1, "agent": "default"}))
        assert await writer.flush(20), "writes stuck behind the refused one"
        assert (writer.rejected, writer.failures, writer.written) == (1, 0, 4)
        assert await records.describe("nul-before") and await records.describe("nul-after")
        assert await records.describe("nul-bad") is None
        transcript = await records.transcript("nul-before")
        assert transcript is not None and [e["text"] for e in transcript["transcript"]] == [
            "fine",
            "also fine",
        ]
        counted = {m.name: m.samples[0].value for m in WriterMetrics(writer).collect()}
        assert counted["parley_records_rejected"] == 1
    finally:
        await records.stop()


async def test_the_call_of_a_killed_server_is_ended_as_worker_lost_when_it_starts_again(
    tmp_path: Path,
) -> None:
    """kill -9 leaves the call's record open (no one was left to end it); the next start ends it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(PARLEY_ICE_HOST_ADDRESSES="127.0.0.1", PARLEY_DATABASE_URL=f"sqlite:///{tmp_path}/r.db")

    async def serve() -> asyncio.subprocess.Process:
        with open(tmp_path / "serve.log", "ab") as log:  # noqa: ASYNC230 - a local file
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "parley.cli", "serve", "--port", str(port)),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        async def listening() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                return (await get(f"{url}/healthz"))[0] == 200
            return False

        deadline = time.monotonic() + 60
        while not await listening():
            assert process.returncode is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            await asyncio.sleep(0.2)
        return process

    async def listed() -> list[dict[str, Any]]:
        status, page = await get(f"{url}/v1/calls")
        return list(page["calls"]) if status == 200 else []

    process = await serve()
    caller = Caller(url)
    try:
        await caller.connect()
        assert caller.call_url is not None
        call_id = caller.call_url.rstrip("/").rsplit("/", 1)[1]
        deadline = time.monotonic() + 20
        while not [c for c in await listed() if c["id"] == call_id]:
            assert time.monotonic() < deadline, "the live call's record"
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        await caller.hang_up()
    killed_at = time.time()

    process = await serve()
    try:
        record = await recorded(url, call_id)
        assert record["end_reason"] == "worker_lost" and record["worker"] == "serve"
        assert record["duration_s"] > 0 and record["ended_at"] is not None
        assert [c["state"] for c in await listed() if c["id"] == call_id] == ["ended"]
        assert time.time() - killed_at < 120
    finally:
        await interrupt(process)
