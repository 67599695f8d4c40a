"""Waiting for something a user would notice, with a generous bound and a message that says what."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any


async def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def interrupt(process: asyncio.subprocess.Process, timeout_s: float = 20) -> None:
    """Stop a server process as Ctrl-C does, and kill it if it has not exited within `timeout_s`."""
    process.send_signal(signal.SIGINT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout_s)
    if process.returncode is None:
        process.kill()
        await process.wait()
