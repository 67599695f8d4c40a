"""Media processes on one machine: `parley serve --processes N`, without Redis.

The front door (HTTP, the page, records, the emulator) stays in the process `parley serve` started; the
calls run in N child processes, one event loop and one core each, so no call waits behind the media of
calls on another core. Each child answers the fleet's requests (parley/fleet/requests.py) as JSON on
a Unix socket only its parent can reach:

    POST /rpc        a request {"op": ...}; its reply
    GET  /stats      {"active_calls", "calls_started", "calls_ended", "calls": [ids]}
    GET  /metrics    its Prometheus text

and, as each call ends, writes `{"ended": id, "reason": ..., "n": calls ended so far}` to a pipe its
parent reads: a call ended just before its process died is not taken for one the death lost.

`MediaProcesses` is the parent's side: the children as one `CallHost`. A new call goes to the child
with the fewest calls; a child that exits is started again, and its calls read as ended (worker_lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web

from parley.agent.worker import CallNotFound, Worker, WorkerBusy
from parley.fleet.exposition import one_exposition
from parley.fleet.requests import answer, refusal_error
from parley.signaling.app import WorkerTimeout

logger = logging.getLogger("parley.processes")

START_TIMEOUT_S = 90.0  # a child imports everything and warms up before it answers
STATS_INTERVAL_S = 1.0
LOST_CALLS_KEPT = 10_000  # calls of dead children remembered, to say "worker_lost" rather than 404


# --- a child's side ---------------------------------------------------------------------------------


def media_process_app(worker: Worker, render_metrics: Callable[[], tuple[bytes, str]]) -> web.Application:
    async def rpc(request: web.Request) -> web.Response:
        try:
            message = await request.json()
        except ValueError:
            return web.json_response({"ok": False, "error": "internal", "message": "not JSON"}, status=400)
        refusal = None if worker.accepting else "this media process is shutting down"
        return web.json_response(await answer(worker, message, refusal))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**worker.stats(), "calls": list(worker.calls)})

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render_metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/rpc", rpc)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    return app


def report_endings(worker: Worker, endings_fd: int) -> None:
    """Each call's end, a line on `endings_fd` as it happens. Never blocks the loop: a line the pipe
    has no room for is dropped (the stats a second later say the same)."""
    os.set_blocking(endings_fd, False)

    def ended(call_id: str, reason: str) -> None:
        line = {"ended": call_id, "reason": reason, "n": sum(worker.calls_ended.values())}
        with contextlib.suppress(OSError):
            os.write(endings_fd, json.dumps(line).encode() + b"\n")

    worker.on_call_ended = ended


# --- the parent's side --------------------------------------------------------------------------------


@dataclass
class MediaProcess:
    index: int
    socket_path: str
    process: asyncio.subprocess.Process | None = None
    session: aiohttp.ClientSession | None = None
    ready: bool = False
    calls: set[str] = field(default_factory=set)  # as of its last stats, plus those placed since
    # the endings its pipe told of that its last stats do not count yet: n -> (call id, reason)
    heard_endings: dict[int, tuple[str, str]] = field(default_factory=dict)
    endings: asyncio.Task[None] | None = None  # reads that pipe until the child closes it
    inflight: int = 0
    placed: int = 0  # calls it took since it started: its stats may not have counted the last ones
    restarts: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"serve-{self.index}"  # its worker name in the call records

    @property
    def load(self) -> int:
        return len(self.calls) + self.inflight

    @property
    def calls_started(self) -> int:
        return max(int(self.stats.get("calls_started", 0)), self.placed)

    @property
    def counted_endings(self) -> int:
        """How many calls its last stats say it has ended."""
        return sum(int(n) for n in (self.stats.get("calls_ended") or {}).values())

    def forget_counted_endings(self) -> None:
        counted = self.counted_endings
        self.heard_endings = {n: e for n, e in self.heard_endings.items() if n > counted}


# (index, socket path, the file descriptor it writes its calls' endings to) -> the child's command line
ChildCommand = Callable[[int, str, int], list[str]]


class MediaProcesses:
    """N child processes as one CallHost."""

    def __init__(
        self,
        command: ChildCommand,
        count: int,
        socket_dir: Path,
        env: Mapping[str, str] | None = None,
        rpc_timeout_s: float = 10.0,
    ) -> None:
        self.command = command
        self.env = dict(env if env is not None else os.environ)
        self.rpc_timeout_s = rpc_timeout_s
        self.children = [MediaProcess(i, str(socket_dir / f"media-{i}.sock")) for i in range(1, count + 1)]
        self.on_process_lost: Callable[[str], None] | None = None  # told the worker name of a child that died
        self.lost_calls: OrderedDict[str, str] = OrderedDict()  # call id -> worker name
        # the counters of children that died: a restarted child counts from 0, the sums must not
        self._retired_started = 0
        self._retired_ended: Counter[str] = Counter()
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(child) for child in self.children))
        self._tasks = [asyncio.create_task(self._supervise(c), name=c.name) for c in self.children]
        self._tasks.append(asyncio.create_task(self._poll_stats(), name="media-stats"))

    async def _spawn(self, child: MediaProcess) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(child.socket_path)
        read_fd, write_fd = os.pipe()
        try:
            child.process = await asyncio.create_subprocess_exec(
                *self.command(child.index, child.socket_path, write_fd),
                env=self.env,
                preexec_fn=_die_with_parent,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child's now: the pipe ends when the child does
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        child.heard_endings, child.placed = {}, 0
        child.endings = asyncio.create_task(self._read_endings(child, pipe), name=f"{child.name}-endings")
        if child.session is None:
            connector = aiohttp.UnixConnector(path=child.socket_path)
            child.session = aiohttp.ClientSession(connector=connector, base_url="http://media")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while asyncio.get_running_loop().time() < deadline:
            if child.process.returncode is not None:
                code = child.process.returncode
                raise RuntimeError(f"media process {child.index} exited at start ({code})")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                child.stats = await self._get(child, "/stats")
                child.calls = set(child.stats.get("calls", []))
                child.ready = True
                logger.info("media process %d ready (pid %d)", child.index, child.process.pid)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"media process {child.index} did not start within {START_TIMEOUT_S:.0f} s")

    async def _read_endings(self, child: MediaProcess, pipe: BinaryIO) -> None:
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    ending = json.loads(line)
                    call_id = str(ending["ended"])
                    child.calls.discard(call_id)
                    child.heard_endings[int(ending["n"])] = (call_id, str(ending["reason"]))
                    child.forget_counted_endings()
        finally:
            transport.close()

    async def _supervise(self, child: MediaProcess) -> None:
        while not self.stopping and child.process is not None:
            code = await child.process.wait()
            child.ready = False
            if self.stopping:
                return
            if child.endings is not None:  # what it wrote before it died: those calls were not lost
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await child.endings
            lost = list(child.calls)
            logger.error(
                "media process %d exited (%s), %d calls lost: starting it again", child.index, code, len(lost)
            )
            for call_id in lost:
                self.lost_calls[call_id] = child.name
            while len(self.lost_calls) > LOST_CALLS_KEPT:
                self.lost_calls.popitem(last=False)
            self._retire(child, len(lost))
            child.calls.clear()
            child.restarts += 1
            if self.on_process_lost is not None:
                self.on_process_lost(child.name)
            await asyncio.sleep(min(5.0, 0.5 * child.restarts))  # a child that dies at once is not spun
            if self.stopping:
                return
            try:
                await self._spawn(child)
            except RuntimeError as exc:
                logger.error("%s", exc)

    def _retire(self, child: MediaProcess, lost: int) -> None:
        """Keep a dead child's counters in the sums, its lost calls counted as ended (worker_lost)."""
        self._retired_started += child.calls_started
        self._retired_ended.update({r: int(n) for r, n in (child.stats.get("calls_ended") or {}).items()})
        child.forget_counted_endings()
        self._retired_ended.update(reason for _, reason in child.heard_endings.values())
        child.heard_endings = {}
        if lost:
            self._retired_ended["worker_lost"] += lost
        child.stats = {}

    async def _poll_stats(self) -> None:
        while not self.stopping:
            await asyncio.sleep(STATS_INTERVAL_S)
            for child in self.children:
                if not child.ready:
                    continue
                placed_during = set(child.calls)
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError):
                    child.stats = await self._get(child, "/stats")
                    child.forget_counted_endings()
                    # calls placed while the stats were on their way are kept until the next poll; those
                    # whose end the pipe told of after the stats were taken are gone, though listed
                    ended = {call_id for call_id, _ in child.heard_endings.values()}
                    listed = set(child.stats.get("calls", [])) - ended
                    child.calls = listed | (child.calls - placed_during)

    def signal_children(self, signum: int) -> None:
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signum)

    async def wait_children(self, timeout_s: float) -> None:
        waits = [c.process.wait() for c in self.children if c.process is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waits)

    async def close(self, signum: int = signal.SIGINT, timeout_s: float = 10.0) -> None:
        """Stop the children (SIGINT ends their calls now, SIGTERM lets them drain) and wait for them."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        self.signal_children(signum)
        await self.wait_children(timeout_s)
        self.signal_children(signal.SIGKILL)
        await self.wait_children(5.0)
        for child in self.children:
            if child.endings is not None:
                child.endings.cancel()
            if child.session is not None:
                await child.session.close()

    # --- requests -------------------------------------------------------------------------------

    async def _get(self, child: MediaProcess, path: str) -> dict[str, Any]:
        assert child.session is not None
        async with child.session.get(path, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return dict(await response.json())

    async def _rpc(self, child: MediaProcess, message: dict[str, Any]) -> dict[str, Any] | None:
        """The child's reply; None when it could not be reached or did not answer in time."""
        if child.session is None or not child.ready:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=self.rpc_timeout_s)
            async with child.session.post("/rpc", json=message, timeout=timeout) as response:
                return dict(await response.json())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            logger.warning("media process %d did not answer %s: %s", child.index, message.get("op"), exc)
            return None

    async def create_call(
        self,
        offer_sdp: str,
        max_seconds: float | None = None,
        agent: str | None = None,
        variables: Mapping[str, str] | None = None,
        caller: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        message = {
            "op": "create",
            "sdp": offer_sdp,
            "max_seconds": max_seconds,
            "agent": agent,
            "variables": dict(variables or {}),
            "caller": dict(caller or {}),
        }
        refused: Exception = WorkerBusy("no media process is running", retry_after_s=2)
        for child in sorted((c for c in self.children if c.ready), key=lambda c: (c.load, c.index)):
            child.inflight += 1
            try:
                reply = await self._rpc(child, message)
            finally:
                child.inflight -= 1
            if reply is None:
                continue
            if reply.get("ok"):
                child.calls.add(str(reply["call"]))
                child.placed += 1
                return str(reply["call"]), str(reply["sdp"])
            refused = refusal_error(reply)
            if not isinstance(refused, WorkerBusy):  # a bad offer or an unknown agent: the same everywhere
                raise refused
        raise refused

    async def _ask_holder(self, call_id: str, message: dict[str, Any]) -> tuple[MediaProcess, dict[str, Any]]:
        """The child holding the call and its (ok) reply. Asks the one that said it holds it first, then
        the others (its stats may be a second old)."""
        children = sorted(self.children, key=lambda c: call_id not in c.calls)
        silent: MediaProcess | None = None  # the holder, alive but not answering
        for child in children:
            reply = await self._rpc(child, {**message, "call": call_id})
            if reply is None:
                if call_id in child.calls and child.ready:
                    silent = child
                continue
            if reply.get("error") == "not_found":
                continue
            if not reply.get("ok"):
                raise refusal_error(reply, call_id)
            return child, reply
        if silent is not None:
            raise WorkerTimeout(
                f"media process {silent.index} did not answer within {self.rpc_timeout_s:.0f} s"
            )
        raise CallNotFound(call_id)

    async def describe_call(self, call_id: str) -> dict[str, Any]:
        if call_id in self.lost_calls:
            worker = self.lost_calls[call_id]
            return {"call": call_id, "state": "ended", "end_reason": "worker_lost", "worker": worker}
        child, reply = await self._ask_holder(call_id, {"op": "describe"})
        summary = reply.get("summary")
        return {**(summary if isinstance(summary, dict) else {}), "worker": child.name}

    async def end_call(self, call_id: str, reason: str = "hangup") -> None:
        child, _ = await self._ask_holder(call_id, {"op": "end", "reason": reason})
        child.calls.discard(call_id)  # ended: were its process to die before the next stats, not "lost"

    async def resume_call(self, call_id: str, offer_sdp: str) -> str:
        try:
            _, reply = await self._ask_holder(call_id, {"op": "resume", "sdp": offer_sdp})
        except WorkerTimeout as exc:
            raise WorkerBusy(str(exc), retry_after_s=2) from None
        return str(reply["sdp"])

    def stats(self) -> dict[str, Any]:
        ended = Counter(self._retired_ended)
        for child in self.children:
            ended.update({r: int(n) for r, n in (child.stats.get("calls_ended") or {}).items()})
            ended.update(reason for _, reason in child.heard_endings.values())  # not in its stats yet
        return {
            "active_calls": sum(len(c.calls) for c in self.children),
            "calls_started": self._retired_started + sum(c.calls_started for c in self.children),
            "calls_ended": dict(ended),
            "processes": [
                {
                    "worker": c.name,
                    "pid": c.process.pid if c.process is not None else None,
                    "ready": c.ready,
                    "active_calls": len(c.calls),
                    "restarts": c.restarts,
                }
                for c in self.children
            ],
        }

    async def metrics(self, own: bytes) -> bytes:
        """The front door's metrics (`own`) and every child's, each sample labelled with its process."""
        texts = {"front": own.decode()}
        for child in self.children:
            if child.ready and child.session is not None:
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with child.session.get("/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                        texts[child.name] = await r.text()
        return one_exposition(texts)


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the parent dies (Linux), so no call outlives it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
