"""`parley serve --processes N`: the front door in one process, the calls in N media processes.

Real processes, real peers on loopback UDP, the real SDK against the embedded emulator (the front
door's, shared by the children), a real SQLite file for the records."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parley.agent.metrics import parse_histograms
from parley.caller import Caller, load_wav
from tests.test_lifecycle import ROOT, free_port
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401 - the fixture
from tests.waiting import interrupt, wait_until

SPEECH = load_wav(str(ROOT / "tests" / "data" / "speech.wav"))


class Pool:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.health: dict[str, Any] = {}

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            body = await response.text()
            kind = response.content_type
            return response.status, json.loads(body) if kind == "application/json" else body

    async def healthz(self) -> dict[str, Any]:
        self.health = (await self.get("/healthz"))[1]
        return self.health

    def pids(self) -> list[int]:
        return [p["pid"] for p in self.health["processes"]]


def serve_env(db: Path, webhook_url: str) -> dict[str, str]:
    """`parley serve`'s environment for these tests: the offline emulator, loopback ICE, records in
    `db`, signed webhooks to `webhook_url`."""
    env = {
        **os.environ,
        "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1",
        "PARLEY_DATABASE_URL": f"sqlite:///{db}",
        "PARLEY_WEBHOOK_URL": webhook_url,
        "PARLEY_WEBHOOK_SECRET": SECRET,
        "PARLEY_DISPATCH_TIMEOUT": "3",  # how long the front door waits for a media process's answer
    }
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "PARLEY_PROCESSES"):
        env.pop(key, None)
    return env


@pytest.fixture
async def pool(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Pool]:  # noqa: F811
    receiver.refuse_first = 0  # deliver at once
    port = free_port()
    env = serve_env(tmp_path / "records.db", receiver.url)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "parley.cli", "serve", "--processes", "2", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )
    server = Pool(process, f"http://127.0.0.1:{port}")

    async def ready() -> bool:
        try:
            health = await server.healthz()
        except aiohttp.ClientError:
            return False
        return all(p["ready"] for p in health["processes"])

    try:
        for _ in range(600):
            if await ready():
                break
            assert process.returncode is None, "parley serve --processes 2 exited at start"
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the two media processes were not ready within 60 s")
        yield server
    finally:
        if process.returncode is None:
            await interrupt(process)


async def converse(caller: Caller) -> None:
    """Say the test sentence and wait until the agent (the emulator's echo) answers out loud."""
    await caller.connect()
    caller.say(SPEECH)
    await caller.wait_for_event("agent_turn_start", timeout_s=30)
    await wait_until(lambda: caller.heard.last_loud() is not None, 15, "the agent's voice")


async def peer_closed_calls(pool: Pool, worker: str) -> float:
    """How many calls `worker` has ended because their caller closed the connection: read from the
    process itself (the front door's /metrics asks each process as it is read)."""
    _, text = await pool.get("/metrics")
    family = next(f for f in text_string_to_metric_families(text) if f.name == "parley_calls_ended")
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith("_total") and s.labels == {"reason": "peer_closed", "process": worker}
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


async def test_calls_spread_over_the_media_processes_and_each_is_heard_ended_and_recorded(pool: Pool) -> None:
    callers = [Caller(pool.url), Caller(pool.url)]
    await asyncio.gather(*(converse(c) for c in callers))
    holders = set()
    for caller in callers:
        state = await caller.call_state()
        assert state["state"] == "active", state
        holders.add(state["worker"])
    assert holders == {"serve-1", "serve-2"}  # the second call went to the idle process
    health = await pool.healthz()
    assert health["active_calls"] == 2 and [p["active_calls"] for p in health["processes"]] == [1, 1]

    status, text = await pool.get("/metrics")
    assert status == 200
    lag = next(f for f in text_string_to_metric_families(text) if f.name == "parley_event_loop_lag_seconds")
    assert {s.labels["process"] for s in lag.samples} == {"front", "serve-1", "serve-2"}
    frames = next(f for f in text_string_to_metric_families(text) if f.name == "parley_uplink_frames")
    decoded = {s.labels["process"]: s.value for s in frames.samples if s.labels["outcome"] == "decoded"}
    assert decoded["serve-1"] > 0 and decoded["serve-2"] > 0, decoded  # both callers were heard
    summed = parse_histograms(text)["parley_uplink_frames_total{outcome=decoded}"]  # as bench reads it
    assert summed == sum(decoded.values()), (summed, decoded)

    call_urls = [c.call_url for c in callers]
    assert [await c.hang_up() for c in callers] == [204, 204]
    for url in call_urls:
        assert url is not None
        path = url.removeprefix(pool.url)

        async def ended(path: str = path) -> bool:
            status, record = await pool.get(path)
            return status == 200 and record.get("state") == "ended"

        for _ in range(100):
            if await ended():
                break
            await asyncio.sleep(0.1)
        status, record = await pool.get(path)
        assert record["state"] == "ended" and record["end_reason"] == "hangup", record
        assert record["worker"] in holders
    for _ in range(50):  # the front door counts calls from the processes' stats, a second old at most
        if (await pool.healthz())["active_calls"] == 0:
            break
        await asyncio.sleep(0.1)
    assert pool.health["active_calls"] == 0, pool.health


async def test_a_media_process_that_dies_loses_only_its_calls_and_is_started_again(
    pool: Pool,
    receiver: Receiver,  # noqa: F811
) -> None:
    def announced(kind: str) -> dict[str, str]:
        return {e["call"]["id"]: e["call"].get("end_reason") for e in receiver.events if e["type"] == kind}

    first, second, hung = Caller(pool.url), Caller(pool.url), Caller(pool.url)
    await asyncio.gather(converse(first), converse(second))
    await converse(hung)
    await wait_until(lambda: len(announced("call.started")) == 3, 30, "the calls' call.started")
    # `hung` is hung up just before its process dies, sooner than the front door's next look at its
    # calls: it ended as hung up, not lost
    doomed = (await hung.call_state())["worker"]
    hung_path = (hung.call_url or "").removeprefix(pool.url)
    assert await hung.hang_up() == 204
    if (await second.call_state())["worker"] == doomed:
        first, second = second, first  # `first`: the other call of the doomed process
    assert (await first.call_state())["worker"] == doomed
    hung_id = hung_path.rsplit("/", 1)[-1]
    await wait_until(lambda: hung_id in announced("call.ended"), 10, "the hung-up call's call.ended")
    # `left` is ended from the caller's side (its peer connection closed, no DELETE): the front door
    # hears of it only from the process, which dies at once after
    left = Caller(pool.url)
    await converse(left)
    assert (await left.call_state())["worker"] == doomed  # the two processes held a call each again
    left_path = (left.call_url or "").removeprefix(pool.url)
    health = await pool.healthz()
    victim = next(p["pid"] for p in health["processes"] if p["worker"] == doomed)
    await left.pc.close()
    deadline = time.monotonic() + 10
    while await peer_closed_calls(pool, doomed) < 1:  # then at once: sooner than its next stats
        assert time.monotonic() < deadline, f"{doomed} did not end the call its caller closed"
        await asyncio.sleep(0.02)
    os.kill(victim, signal.SIGKILL)

    async def restarted() -> bool:
        health = await pool.healthz()
        entry = next(p for p in health["processes"] if p["worker"] == doomed)
        return bool(entry["ready"] and entry["restarts"] == 1 and entry["pid"] != victim)

    for _ in range(600):
        if await restarted():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"{doomed} was not started again within 60 s")
    health = await pool.healthz()
    # the dead process's counters stay in the sums (its replacement counts from 0); its call was lost,
    # the two that had ended were not
    assert health["calls_started"] == 4 and health["calls_ended"].get("worker_lost") == 1, health
    assert health["calls_ended"].get("peer_closed") == 1, health
    lost = await first.call_state()
    assert lost["state"] == "ended" and lost["end_reason"] == "worker_lost", lost
    survivor = await second.call_state()
    assert survivor["state"] == "active", survivor  # the other process's call goes on
    status, record = await pool.get(hung_path)
    assert status == 200 and record["end_reason"] == "hangup", record
    status, record = await pool.get(left_path)
    assert status == 200 and record["end_reason"] == "peer_closed", record
    await first.hang_up()
    await left.hang_up()  # its HTTP session; the call is long gone (404)

    again = Caller(pool.url)  # the restarted process takes calls
    await converse(again)
    assert (await again.call_state())["worker"] == doomed  # it was the idle one
    assert await again.hang_up() == 204
    assert await second.hang_up() == 204
    # the dead process could not say its call ended: the front door did, and the others said theirs
    lost_id, survivor_id = lost["call"], survivor["call"]
    await wait_until(lambda: len(announced("call.ended")) == 5, 30, "call.ended of all five calls")
    ended = announced("call.ended")
    assert ended[lost_id] == "worker_lost" and ended[survivor_id] == "hangup", ended
    assert ended[hung_id] == "hangup" and ended[left_path.rsplit("/", 1)[-1]] == "peer_closed", ended
    assert receiver.bad_signatures == 0

    pids = pool.pids()
    await interrupt(pool.process)
    assert pool.process.returncode == 0
    await wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the media processes to exit")


NO_OPUS = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 0",
        "c=IN IP4 0.0.0.0",
        "a=rtpmap:0 PCMU/8000",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "",
    ]
)


async def test_a_stalled_media_process_is_reported_as_such_and_its_call_goes_on_after(pool: Pool) -> None:
    first = Caller(pool.url)
    await converse(first)
    holder = (await first.call_state())["worker"]
    pid = next(p["pid"] for p in (await pool.healthz())["processes"] if p["worker"] == holder)
    assert first.call_url is not None
    path = first.call_url.removeprefix(pool.url)
    os.kill(pid, signal.SIGSTOP)  # alive, but its loop answers nothing
    try:
        status, body = await pool.get(path)
        assert status == 504 and holder.removeprefix("serve-") in body["error"], body  # not "no such call"
        second = Caller(pool.url)  # new calls still find a process that answers
        await second.connect(timeout_s=20)
        assert (await second.call_state())["worker"] != holder
    finally:
        os.kill(pid, signal.SIGCONT)
    status, state = await pool.get(path)
    assert status == 200 and state["state"] == "active", state  # the stall cost the call nothing lasting
    assert await first.hang_up() == 204
    assert await second.hang_up() == 204


async def test_bad_requests_get_the_same_answers_as_from_one_process(pool: Pool) -> None:
    sdp = {"Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as session:
        async with session.post(pool.url + "/v1/calls", data="v=0\r\nnot sdp", headers=sdp) as response:
            assert response.status == 400
            assert "malformed sdp" in (await response.text()).lower()
        # one the front door lets through and a media process refuses: its refusal comes back as it was
        async with session.post(pool.url + "/v1/calls", data=NO_OPUS, headers=sdp) as response:
            assert response.status == 422
            assert "Opus" in (await response.text())
        unknown = "/v1/calls/" + "0" * 32
        async with session.get(pool.url + unknown) as response:
            assert response.status == 404
        async with session.delete(pool.url + unknown) as response:
            assert response.status == 404
    assert all(p["active_calls"] == 0 for p in (await pool.healthz())["processes"])
    assert all(p["restarts"] == 0 for p in pool.health["processes"])  # nothing crashed a child


async def test_the_media_processes_end_with_the_front_door(pool: Pool) -> None:
    caller = Caller(pool.url)
    await caller.connect()
    caller.say(np.zeros(4800, np.int16))
    pids = pool.pids()
    assert all(alive(pid) for pid in pids)
    pool.process.kill()  # no cleanup at all: the children must not outlive it
    await pool.process.wait()
    await wait_until(lambda: not any(alive(pid) for pid in pids), 20, "the orphaned media processes to end")
    await caller.hang_up()


def test_processes_zero_means_one_per_core_this_process_may_use() -> None:
    from parley.pool import process_count

    assert process_count(3) == 3
    assert process_count(0) == len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit, match="PARLEY_PROCESSES"):
        process_count(-1)
