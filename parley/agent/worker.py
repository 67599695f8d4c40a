"""An agent worker: holds the calls of one process and answers offers for new ones.

`parley serve` runs one in-process; the signaling server talks to it only through the `CallHost`
methods below (create_call, end_call, describe_call, stats), so a remote worker can stand in its place.

What a call is made of (its agent's conversation, call length, whether it takes video) comes from a
`CallPlanner` the composition root builds from the agent profiles, so calls of different agents share
one worker and a reload of the profiles changes only the calls that start after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from parley.agent.call import Call, CallOptions
from parley.agent.sdp import OfferError
from parley.agent.session import SessionFactory

logger = logging.getLogger(__name__)


# What a call's record keeps of its caller, and how long each may be (the records' column widths).
CALLER_FACTS = {"origin": 512, "client_address": 64}


class CallNotFound(KeyError):
    pass


class UnknownAgent(LookupError):
    """The call names an agent this worker does not have."""


@dataclass
class CallPlan:
    """One call's agent and what the agent makes of the call."""

    agent: str
    make_session: SessionFactory
    max_duration_s: float | None = None  # the agent's longest call; None: the worker's
    video: bool = True  # False: the call takes no video
    model: str | None = None  # what the call's summary and record say it talks to


# (call id, agent name or None for the default, variables) -> the plan; raises UnknownAgent.
CallPlanner = Callable[[str, str | None, Mapping[str, str]], CallPlan]


def single_agent(make_session: SessionFactory, agent: str = "default") -> CallPlanner:
    """Every call the same conversation: a worker without profiles (tests, the loopback backend)."""

    def plan(call_id: str, name: str | None, variables: Mapping[str, str]) -> CallPlan:
        if name not in (None, agent):
            raise UnknownAgent(name)
        return CallPlan(agent, make_session)

    return plan


class WorkerBusy(Exception):
    """No capacity for another call now; `retry_after_s` is a hint for the caller."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Worker:
    def __init__(
        self,
        plan: CallPlanner,
        call_options: CallOptions,
        max_calls: int = 0,
    ) -> None:
        self._plan = plan  # Gemini, the emulator behind the SDK, or the loopback echo, per agent
        self.call_options = call_options
        self.max_calls = max_calls  # 0: no limit
        self.accepting = True
        self.calls: dict[str, Call] = {}
        self.calls_started = 0
        self.calls_ended: dict[str, int] = {}
        # When set, each call gets its own ICE servers from it (fresh TURN credentials per call).
        self.ice_server_source: Callable[[], list[dict[str, Any]]] | None = None
        self.on_call_ended: Callable[[str, str], None] | None = None  # told (call id, end reason)

    async def create_call(
        self,
        offer_sdp: str,
        max_seconds: float | None = None,
        agent: str | None = None,
        variables: Mapping[str, str] | None = None,
        caller: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        """Answer an offer for `agent` (None: the default one): (call id, SDP answer). Raises OfferError
        for an offer it cannot take, UnknownAgent, WorkerBusy when it is full or draining. `caller`: what
        the front door knew of the caller ("origin", "client_address"), for the call's record."""
        if not self.accepting:
            raise WorkerBusy("this worker is shutting down")
        if self.max_calls and len(self.calls) >= self.max_calls:
            raise WorkerBusy(f"all {self.max_calls} call slots are in use")
        call_id = uuid.uuid4().hex
        plan = self._plan(call_id, agent, variables or {})
        given = caller or {}
        facts = {key: str(given[key])[:limit] for key, limit in CALLER_FACTS.items() if given.get(key)}
        options = dataclasses.replace(self.call_options, agent=plan.agent, model=plan.model, caller=facts)
        if self.ice_server_source is not None:
            options = dataclasses.replace(options, ice_servers=self.ice_server_source())
        if plan.max_duration_s is not None:  # the agent's own limit replaces the process's
            options = dataclasses.replace(options, max_duration_s=plan.max_duration_s)
        if max_seconds is not None and max_seconds < options.max_duration_s:  # the join token's
            options = dataclasses.replace(options, max_duration_s=max_seconds)
        if not plan.video:
            options = dataclasses.replace(options, video=dataclasses.replace(options.video, enabled=False))
        call = Call(plan.make_session, options, self._forget, call_id)
        self.calls[call.id] = call
        try:
            answer = await call.answer(offer_sdp)
        except OfferError:
            await call.close("bad_offer")
            raise
        except Exception as exc:
            # aiortc rejects some offers that pass our checks (odd transports, broken attributes).
            await call.close("bad_offer")
            raise OfferError(
                400, f"the offer could not be negotiated: {type(exc).__name__}: {exc}"[:300]
            ) from None
        self.calls_started += 1
        return call.id, answer

    async def resume_call(self, call_id: str, offer_sdp: str) -> str:
        """A caller whose connection failed rejoins its call with a new offer; returns the answer."""
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(call_id)
        try:
            return await call.rejoin(offer_sdp)
        except OfferError:
            raise
        except Exception as exc:
            message = f"the offer could not be negotiated: {type(exc).__name__}: {exc}"
            raise OfferError(400, message[:300]) from None

    async def end_call(self, call_id: str, reason: str = "hangup") -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(call_id)
        await call.close(reason)

    async def describe_call(self, call_id: str) -> dict[str, Any]:
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(call_id)
        return call.summary()

    def stats(self) -> dict[str, Any]:
        return {
            "active_calls": len(self.calls),
            "calls_started": self.calls_started,
            "calls_ended": dict(self.calls_ended),
        }

    async def drain(self, timeout_s: float) -> None:
        """Take no new calls and let the current ones finish; after `timeout_s`, end those left."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.calls:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(0.1, left))
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(call.close("server_shutdown") for call in list(self.calls.values())))

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        reason = call.end_reason or "unknown"
        self.calls_ended[reason] = self.calls_ended.get(reason, 0) + 1
        if self.on_call_ended is not None:
            self.on_call_ended(call.id, reason)
