"""A connection's clock: goAway before the lifetime, the lifetime's end, and the timed faults."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from .options import EmulatorOptions
from .protocol import CLOSE_NORMAL, duration_string
from .rules import ModelRules
from .state import ConnectionRecord

# What the service says when a connection reaches its lifetime (gRPC CANCELLED -> 1000).
LIFETIME_REASON = "operation was cancelled"


class Clocked(Protocol):
    @property
    def options(self) -> EmulatorOptions: ...
    @property
    def closed(self) -> bool: ...

    rules: ModelRules
    record: ConnectionRecord

    async def send(self, message: dict[str, object]) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    async def drop(self) -> None: ...


async def run_clock(session: Clocked) -> None:
    """goAway before the lifetime, the lifetime's end, and timed faults; the timers use the options in
    force when the connection's setup completed."""
    opts = session.options
    now = time.monotonic()
    lifetime = max(0.0, opts.lifetime_s)
    end_at = now + lifetime
    # Clamped to half the lifetime, so a short lifetime does not mean a goAway at once.
    lead = opts.goaway_lead_s if opts.goaway_lead_s is not None else session.rules.goaway_lead_s
    goaway_at: float | None = end_at - min(max(0.0, lead), lifetime / 2)
    fault_goaway_at = now + opts.goaway_after_s if opts.goaway_after_s is not None else None
    fault_time_left = opts.goaway_time_left_s
    drop_at = now + opts.drop_after_s if opts.drop_after_s is not None else None
    while not session.closed:
        pending = [t for t in (goaway_at, fault_goaway_at, drop_at, end_at) if t is not None]
        next_at = min(pending)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        now = time.monotonic()
        if drop_at is not None and now >= drop_at:
            await session.drop()
            return
        if fault_goaway_at is not None and now >= fault_goaway_at:
            fault_goaway_at = None
            if fault_time_left is not None:
                end_at = now + max(0.0, fault_time_left)
                goaway_at = None  # this goAway is the warning for the new end
            await go_away(session, end_at - now)
        if goaway_at is not None and now >= goaway_at:
            goaway_at = None
            await go_away(session, end_at - now)
        if now >= end_at:
            await session.close(CLOSE_NORMAL, LIFETIME_REASON)
            return


async def go_away(session: Clocked, time_left: float) -> None:
    session.record.go_aways += 1
    await session.send({"goAway": {"timeLeft": duration_string(round(max(0.0, time_left), 3))}})
