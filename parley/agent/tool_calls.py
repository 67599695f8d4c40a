"""The tool calls of one conversation: each runs as its own task and is answered on the connection then up.

A NON_BLOCKING call's answer says when the model should speak it (`scheduling`, never on Vertex AI); a
`toolCallCancellation` cancels the task. A call outlives its connection when the next one resumes the
same session (a goAway switch, a reconnect), since that session still waits for the answer; a fresh
session knows nothing of it, so starting one cancels every call still running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from google.genai import errors, types
from websockets.exceptions import ConnectionClosed

from parley.agent.live_config import SessionConfig
from parley.agent.session import SessionListener, SessionStats

logger = logging.getLogger(__name__)


class ToolCalls:
    def __init__(
        self, config: SessionConfig, family: str, listener: SessionListener, stats: SessionStats
    ) -> None:
        self.live: Any = None  # the connection answers go on
        self._tools = config.tools
        self._timeout_s = config.tool_timeout_s
        self._context = config.context  # for tools that ask whose call they serve
        self._family = family
        self._vertex = config.vertex
        self._listener = listener
        self._stats = stats
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._unsent: list[types.FunctionResponse] = []  # answered while no connection was up

    async def connected(self, live: Any, resumed: bool) -> None:
        """A new connection: answers go there. A fresh session will never take the old calls' answers."""
        if not resumed:
            self.cancel_all()
            self._unsent.clear()
        self.live = live
        unsent, self._unsent = self._unsent, []
        for response in unsent:
            await self._answer(response)

    def start(self, call: types.FunctionCall) -> None:
        call_id = call.id or ""
        self._stats.tool_calls += 1
        self._listener.on_session_event("tool_call", {"id": call_id, "name": call.name})
        self._tasks[call_id] = asyncio.create_task(self._run(call, call_id))

    def cancel(self, call_id: str) -> None:
        task = self._tasks.pop(call_id, None)
        if task is not None:
            task.cancel()
            self._listener.on_session_event("tool_cancelled", {"id": call_id})

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _run(self, call: types.FunctionCall, call_id: str) -> None:
        name = call.name or ""
        result = await self._tools.call(name, call.args or {}, self._timeout_s, self._context)
        self._tasks.pop(call_id, None)
        self._listener.on_observed(
            "tool_result", {"id": call_id, "name": call.name, "args": call.args or {}, "result": result}
        )
        scheduling = self._tools.scheduling(name, self._family, self._vertex)
        response = types.FunctionResponse(
            id=call_id or None, name=call.name, response=result, scheduling=scheduling
        )
        await self._answer(response)

    async def _answer(self, response: types.FunctionResponse) -> None:
        try:
            await self.live.send_tool_response(function_responses=[response])
        except (errors.APIError, ConnectionClosed, AttributeError) as exc:
            # The connection went meanwhile: the next one, if it resumes this session, gets the answer.
            logger.info("tool %s answered while its connection was closing: %s", response.name, exc)
            self._unsent.append(response)
