"""A worker's load: how late its event loop runs, and how much of a core it uses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time

LAG_SAMPLE_S = 0.1


def default_worker_id() -> str:
    """host-pid-random: unique across restarts; the host name is the pod name on Kubernetes."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class LoadMonitor:
    """The event loop's lag (how late a 100 ms sleep wakes, smoothed) and this process's CPU use."""

    def __init__(self) -> None:
        self.lag_ms = 0.0
        self.lag_max_ms = 0.0  # the worst since the last report
        self.cpu = 0.0  # fraction of one core, smoothed
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, (loop.time() - started - LAG_SAMPLE_S) * 1000)
            self.lag_ms += 0.2 * (lag - self.lag_ms)
            self.lag_max_ms = max(self.lag_max_ms, lag)

    def sample_cpu(self) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        if wall - last_wall >= 0.2:
            used = (cpu - last_cpu) / (wall - last_wall)
            self.cpu += 0.5 * (used - self.cpu)
            self._cpu_mark = (wall, cpu)
