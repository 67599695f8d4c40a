"""An agent worker: holds the calls of one process and answers offers for new ones.

`parley serve` runs one in-process; the signaling server talks to it only through the `CallHost`
methods below (create_call, end_call, describe_call, stats), so a remote worker can stand in its place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from google import genai

from agent.call import Call, CallOptions
from agent.gemini import SessionConfig
from agent.sdp import OfferError

logger = logging.getLogger(__name__)


class CallNotFound(KeyError):
    pass


class WorkerBusy(Exception):
    """No capacity for another call now; `retry_after_s` is a hint for the caller."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Worker:
    def __init__(
        self,
        client: genai.Client,
        session_config: SessionConfig,
        call_options: CallOptions,
        max_calls: int = 0,
    ) -> None:
        self._client = client
        self._session_config = session_config
        self.call_options = call_options
        self.max_calls = max_calls  # 0: no limit
        self.accepting = True
        self.calls: dict[str, Call] = {}
        self.calls_started = 0
        self.calls_ended: dict[str, int] = {}

    async def create_call(self, offer_sdp: str) -> tuple[str, str]:
        """Answer an offer: (call id, SDP answer). Raises OfferError for an offer it cannot take,
        WorkerBusy when it is full or draining."""
        if not self.accepting:
            raise WorkerBusy("this worker is shutting down")
        if self.max_calls and len(self.calls) >= self.max_calls:
            raise WorkerBusy(f"all {self.max_calls} call slots are in use")
        call = Call(self._client, self._session_config, self.call_options, self._forget)
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

    async def end_call(self, call_id: str, reason: str = "hangup") -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(call_id)
        await call.close(reason)

    def describe_call(self, call_id: str) -> dict[str, Any]:
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

    async def close(self) -> None:
        await asyncio.gather(*(call.close("server_shutdown") for call in list(self.calls.values())))

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        reason = call.end_reason or "unknown"
        self.calls_ended[reason] = self.calls_ended.get(reason, 0) + 1
