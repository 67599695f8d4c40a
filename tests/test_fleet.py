"""Scale-out: `parley signaling` and `parley worker` processes behind a real Redis.

Real everything: a redis-server on a free loopback port, worker subprocesses (`python -m parley.cli
worker`) that reach the emulator through the SDK's own environment (GEMINI_API_KEY,
GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE: the "real Gemini" path), signaling in this process, and aiortc
callers on loopback UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import GeminiEmulator
from parley.processes import RunningSignaling, start_signaling
from parley.settings import Settings
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SPEECH = load_wav(str(ROOT / "tests/data/speech.wav"))
SPEECH_S = SPEECH.size / RATE
HEARTBEAT_S = 0.5
WORKER_TTL_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, without persistence: a restart loses everything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it with apt)")
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Fleet:
    """Worker subprocesses and an in-process signaling server, all on one Redis."""

    def __init__(self, redis: RedisServer, emulator: GeminiEmulator, workdir: Path) -> None:
        self.redis = redis
        self.emulator = emulator
        self.workdir = workdir
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.signaling: RunningSignaling | None = None
        self.callers: list[Caller] = []
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        assert self.signaling is not None
        return f"http://127.0.0.1:{self.signaling.port}"

    @property
    def host(self) -> Any:
        assert self.signaling is not None
        return self.signaling.host

    async def start_signaling(self, **overrides: Any) -> None:
        self.http = self.http or aiohttp.ClientSession()
        settings = Settings(
            host="127.0.0.1",
            port=0,
            redis_url=self.redis.url,
            heartbeat_s=HEARTBEAT_S,
            worker_ttl_s=WORKER_TTL_S,
            dispatch_timeout_s=15.0,
            **overrides,
        )
        self.signaling = await start_signaling(settings)

    async def start_workers(self, *ids: str, **options: Any) -> None:
        """Worker processes (spawn_workers' options), once each has registered and takes calls."""
        await self.spawn_workers(*ids, **options)
        await self.registered(*ids)

    async def registered(self, *ids: str) -> None:
        await wait_until(
            lambda: all(w in self.host.workers and self.host.workers[w].takes_calls() for w in ids),
            40,
            f"workers {ids} to register",
        )

    async def spawn_workers(
        self,
        *ids: str,
        max_calls: int = 8,
        drain_timeout_s: float = 60,
        health_port: int = 0,
        args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        other_backends = ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI")
        env = {k: v for k, v in os.environ.items() if k not in other_backends}
        env.update(
            {
                # the SDK's own variables: exactly how a worker reaches a real Gemini
                "GEMINI_API_KEY": "test",
                "GOOGLE_GEMINI_BASE_URL": self.emulator.base_url,
                "SSL_CERT_FILE": self.emulator.ca_file,
                "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1",
                "PARLEY_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
                "PARLEY_WORKER_TTL": str(WORKER_TTL_S),
                "PARLEY_MAX_CALLS": str(max_calls),
                "PARLEY_DRAIN_TIMEOUT": str(drain_timeout_s),
                "PARLEY_WORKER_HEALTH_PORT": str(health_port),
                # a loaded 2-core test machine lags: only the call cap limits these workers
                "PARLEY_WORKER_MAX_LAG_MS": "5000",
                "PARLEY_WORKER_MAX_CPU": "8",
                **(extra_env or {}),
            }
        )
        for worker_id in ids:
            log = open(self.workdir / f"worker-{worker_id}.log", "wb")  # noqa: ASYNC230 - a local file
            self.workers[worker_id] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "parley.cli",
                "worker",
                "--redis",
                self.redis.url,
                "--id",
                worker_id,
                *args,
                cwd=ROOT,
                env={**env, "PARLEY_WORKER_ID": worker_id},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()

    def log(self, worker_id: str) -> str:
        return (self.workdir / f"worker-{worker_id}.log").read_text(errors="replace")

    async def call(self, **kwargs: Any) -> Caller:
        caller = Caller(self.url, **kwargs)
        self.callers.append(caller)
        await caller.connect(timeout_s=30)
        return caller

    async def get(self, path: str, base: str | None = None) -> tuple[int, dict[str, Any]]:
        assert self.http is not None
        async with self.http.get((base or self.url) + path) as response:
            return response.status, await response.json()

    async def text(self, url: str) -> str:
        assert self.http is not None
        async with self.http.get(url) as response:
            assert response.status == 200
            return await response.text()

    async def state(self, caller: Caller) -> dict[str, Any]:
        assert caller.call_url is not None
        status, body = await self.get(caller.call_url.removeprefix(self.url))
        assert status == 200, body
        return body

    async def post_offer(self) -> tuple[int, dict[str, str], str]:
        """POST a real offer without connecting: (status, headers, body)."""
        pc = RTCPeerConnection(rtc_configuration([]))  # no default STUN server
        try:
            pc.addTransceiver("audio")
            await pc.setLocalDescription(await pc.createOffer())
            assert self.http is not None
            async with self.http.post(
                self.url + "/v1/calls",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as response:
                body = await response.text()
                if response.status == 201:
                    location = response.headers["Location"]
                    async with self.http.delete(self.url + location):
                        pass
                return response.status, dict(response.headers), body
        finally:
            await pc.close()

    async def close(self) -> None:
        """Everything goes, each step bounded: a teardown must never hang the suite."""
        hang_ups = asyncio.gather(*(c.hang_up() for c in self.callers), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hang_ups, 10)
        for proc in self.workers.values():
            if proc.returncode is None:
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if self.http is not None:
            await self.http.close()
        if self.signaling is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signaling.stop(), 20)


@pytest.fixture
async def fleet(redis_server: RedisServer, emulator: GeminiEmulator, tmp_path: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_server, emulator, tmp_path)
    await fleet.start_signaling()
    try:
        yield fleet
    finally:
        await fleet.close()


async def frames_keep_coming(caller: Caller, seconds: float = 2.0) -> bool:
    # A live call's stream keeps time (its silence as DTX packets, 400 ms apart); a busy worker skips
    # the silence a stall missed, so judge only that the stream keeps coming, not its exact length.
    before = caller.heard.length
    await asyncio.sleep(seconds)
    return (caller.heard.length - before) / 48000 > seconds * 0.25


async def is_answered(caller: Caller) -> None:
    """Say something; the agent (Gemini, through the worker) starts answering and its voice is heard."""
    mark, ends = len(caller.events), len(caller.mic.speech_ends)
    caller.say(SPEECH)
    await caller.wait_for_event("agent_turn_start", timeout_s=SPEECH_S + 20, after=mark)
    await wait_until(
        lambda: (
            len(caller.mic.speech_ends) > ends
            and caller.heard.first_loud_after(caller.mic.speech_ends[ends]) is not None
        ),
        10,
        "the agent's voice",
    )


async def test_calls_spread_over_two_workers_least_loaded_first(fleet: Fleet) -> None:
    await fleet.start_workers("w1", "w2")
    placed: list[str] = []
    callers: list[Caller] = []
    for _ in range(10):
        caller = await fleet.call()
        callers.append(caller)
        placed.append((await fleet.state(caller))["worker"])
        # each call went to the worker with fewer calls: the two never differ by more than one
        assert abs(placed.count("w1") - placed.count("w2")) <= 1, placed
    assert placed.count("w1") == placed.count("w2") == 5
    for caller in callers:
        assert (await fleet.state(caller))["state"] in ("connecting", "active")
    assert all(await asyncio.gather(*(frames_keep_coming(c) for c in callers)))
    status, health = await fleet.get("/healthz")
    assert status == 200 and health["active_calls"] == 10
    assert sorted(w["id"] for w in health["workers"]) == ["w1", "w2"]

    # Unbalance it: w1 drops to 2 calls, so the next three go to w1.
    on_w1 = [c for c, w in zip(callers, placed, strict=True) if w == "w1"]
    for caller in on_w1[:3]:
        assert await caller.hang_up() == 204
    await wait_until(lambda: fleet.host.workers["w1"].active == 2, 10, "w1's load to drop")
    for _ in range(3):
        caller = await fleet.call()
        assert (await fleet.state(caller))["worker"] == "w1", fleet.host.workers

    # A caller whose connection failed rejoins on a new one: the offer reaches the worker holding the call.
    lost = callers[-1]
    assert lost.call_url is not None
    call_id = lost.call_url.rsplit("/", 1)[1]
    rejoined = Caller(fleet.url)
    fleet.callers.append(rejoined)
    await rejoined.connect(timeout_s=30, resume=call_id)
    state = await fleet.state(rejoined)
    assert state["rejoins"] == 1 and state["worker"] == placed[-1]
    stranger = Caller(fleet.url)
    fleet.callers.append(stranger)
    with pytest.raises(RuntimeError, match="404"):
        await stranger.connect(resume="no-such-call")


async def test_a_killed_worker_loses_only_its_calls(fleet: Fleet) -> None:
    await fleet.start_workers("w1", "w2")
    callers = [await fleet.call() for _ in range(4)]
    holder = {id(c): (await fleet.state(c))["worker"] for c in callers}
    doomed = [c for c in callers if holder[id(c)] == "w1"]
    survivors = [c for c in callers if holder[id(c)] == "w2"]
    assert len(doomed) == len(survivors) == 2

    fleet.workers["w1"].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    for caller in doomed:
        while True:
            state = await fleet.state(caller)
            if state["state"] == "ended":
                break
            assert time.monotonic() - killed_at < WORKER_TTL_S + 6 * HEARTBEAT_S + 3, state
            await asyncio.sleep(0.1)
        assert state["end_reason"] == "worker_lost" and state["worker"] == "w1"
    assert time.monotonic() - killed_at < WORKER_TTL_S + 6 * HEARTBEAT_S + 3

    # The survivor's calls are untouched: still active, audio still flowing, Gemini still answering.
    for caller in survivors:
        assert (await fleet.state(caller))["state"] == "active"
    assert all(await asyncio.gather(*(frames_keep_coming(c) for c in survivors)))
    await is_answered(survivors[0])

    await wait_until(lambda: "w1" not in fleet.host.workers, 5, "w1 to leave the view")
    caller = await fleet.call()
    assert (await fleet.state(caller))["worker"] == "w2"
    _, health = await fleet.get("/healthz")
    assert [w["id"] for w in health["workers"]] == ["w2"]
    assert {"id": "w1", "how": "lost"}.items() <= health["workers_gone"][0].items()
    for caller in doomed:  # hanging up a call whose worker is gone: there is nothing left to end
        assert await caller.hang_up() == 404


async def test_sigterm_drains_the_worker_and_it_exits_cleanly(fleet: Fleet) -> None:
    health = f"http://127.0.0.1:{free_port()}"
    await fleet.start_workers("w1", drain_timeout_s=60, health_port=int(health.rsplit(":", 1)[1]))
    caller = await fleet.call()
    assert (await fleet.get("/readyz", health))[0] == 200
    metrics = await fleet.text(health + "/metrics")
    assert 'parley_worker_active_calls{worker="w1"} 1' in metrics
    assert "parley_worker_load{" in metrics and "parley_active_calls 1.0" in metrics

    fleet.workers["w1"].send_signal(signal.SIGTERM)
    await wait_until(lambda: not fleet.host.workers["w1"].takes_calls(), 5, "w1 to stop taking calls")
    status, ready = await fleet.get("/readyz", health)
    assert status == 503 and ready["state"] == "draining"
    assert (await fleet.get("/healthz", health))[0] == 200  # draining is alive, just not ready
    status, headers, body = await fleet.post_offer()
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0

    # The call in progress goes on: a spoken turn is answered, and it ends when the caller hangs up.
    assert (await fleet.state(caller))["state"] == "active"
    await is_answered(caller)
    assert fleet.workers["w1"].returncode is None
    assert await caller.hang_up() == 204
    assert await asyncio.wait_for(fleet.workers["w1"].wait(), 15) == 0
    await wait_until(lambda: "w1" not in fleet.host.workers, 5, "w1 to leave the view")
    assert fleet.host.lost[-1]["how"] == "left"
    assert "left the fleet" in fleet.log("w1")


async def test_all_workers_full_is_503_and_a_refusing_worker_is_skipped(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fleet.start_workers("w1", "w2", max_calls=1)
    first = await fleet.call()
    second = await fleet.call()
    assert {(await fleet.state(first))["worker"], (await fleet.state(second))["worker"]} == {"w1", "w2"}
    status, headers, body = await fleet.post_offer()
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    _, health = await fleet.get("/healthz")
    assert health["workers_accepting"] == 0

    # A stale view offers the call to a full worker first: it refuses, and the next one takes it.
    full = (await fleet.state(first))["worker"]
    free = (await fleet.state(second))["worker"]
    assert await second.hang_up() == 204
    await wait_until(lambda: fleet.host.workers[free].takes_calls(), 10, f"{free} to be free")

    async def frozen() -> None:
        return None

    monkeypatch.setattr(fleet.host, "refresh", frozen)
    await asyncio.sleep(HEARTBEAT_S * 2)  # the watcher now runs the frozen refresh
    fleet.host.workers[full].active = 0
    fleet.host.workers[full].accepting = True
    fleet.host.workers[free].lag_ms = 1000.0  # sorts after the "empty" full one
    third = await fleet.call()
    assert (await fleet.state(third))["worker"] == free


async def test_workers_and_signaling_survive_a_redis_restart(fleet: Fleet) -> None:
    await fleet.start_workers("w1", "w2")
    caller = await fleet.call()
    holder = (await fleet.state(caller))["worker"]

    fleet.redis.stop()
    started = time.monotonic()
    status, headers, _ = await fleet.post_offer()
    assert status == 503 and int(headers["Retry-After"]) > 0
    assert time.monotonic() - started < 5, "a Redis outage must be answered quickly"
    # the call in progress is media-direct: it does not notice
    assert await frames_keep_coming(caller)
    await is_answered(caller)

    fleet.redis.start()  # same port, empty: everything is re-registered by its owner
    restarted = time.monotonic()
    workers = fleet.host.workers
    await wait_until(
        lambda: all(w in workers and workers[w].seen_at > restarted for w in ("w1", "w2")),
        20,
        "the workers to re-register",
    )
    state = await fleet.state(caller)
    assert state["state"] == "active" and state["worker"] == holder
    # calls are placed again, on the least-loaded worker: the one without the call in progress
    placed = await fleet.call()
    assert (await fleet.state(placed))["worker"] != holder
    assert await frames_keep_coming(placed)
    assert await caller.hang_up() == 204
