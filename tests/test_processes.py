"""The one lifecycle every long-running command shares: SIGINT ends at once, SIGTERM drains, and a
second signal while draining ends the calls now; cleanup runs in every case."""

from __future__ import annotations

import asyncio
import os
import signal

from parley.processes import until_signalled


class Lifecycle:
    def __init__(self) -> None:
        self.happened: list[str] = []
        self.draining = asyncio.Event()
        self.calls_ended = asyncio.Event()

    async def drain(self) -> None:
        self.happened.append("drain")
        self.draining.set()
        await self.calls_ended.wait()  # the calls finish (or are ended)

    async def end_now(self) -> None:
        self.happened.append("end_now")
        self.calls_ended.set()

    async def cleanup(self) -> None:
        self.happened.append("cleanup")


async def started(lifecycle: Lifecycle) -> asyncio.Task[int]:
    task = asyncio.create_task(until_signalled(lifecycle.cleanup, lifecycle.drain, lifecycle.end_now))
    await asyncio.sleep(0)  # one turn of the loop: the handlers are in place
    return task


async def test_sigint_cleans_up_at_once_without_draining() -> None:
    lifecycle = Lifecycle()
    task = await started(lifecycle)
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(task, 10) == signal.SIGINT
    assert lifecycle.happened == ["cleanup"]


async def test_sigterm_drains_then_cleans_up() -> None:
    lifecycle = Lifecycle()
    task = await started(lifecycle)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(lifecycle.draining.wait(), 10)
    assert not task.done()
    lifecycle.calls_ended.set()  # the last call hung up
    assert await asyncio.wait_for(task, 10) == signal.SIGTERM
    assert lifecycle.happened == ["drain", "cleanup"]


async def test_a_second_signal_while_draining_ends_the_calls_now() -> None:
    lifecycle = Lifecycle()
    task = await started(lifecycle)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(lifecycle.draining.wait(), 10)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == signal.SIGTERM
    assert lifecycle.happened == ["drain", "end_now", "cleanup"]
