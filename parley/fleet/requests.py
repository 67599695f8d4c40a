"""The requests a worker answers, whatever carries them: Redis (rpc_server) or a local socket (local).

A request is a dict {"op": "create" | "resume" | "describe" | "end", ...} as parley/fleet/wire.py
describes; the reply is {"ok": true, ...} or a refusal {"ok": false, "error", "message", ...}. The
other side turns a refusal back into the exception it stands for (`refusal_error`).
"""

from __future__ import annotations

import logging
from typing import Any

from parley.agent.sdp import OfferError
from parley.agent.worker import CallNotFound, UnknownAgent, Worker, WorkerBusy

logger = logging.getLogger("parley.worker")


async def answer(
    worker: Worker, request: dict[str, Any], refusal: str | None = None, agents_only: list[str] | None = None
) -> dict[str, Any]:
    """The reply to one request. `refusal`: why no new call is taken now (None: calls are taken);
    `agents_only`: the agents whose calls this worker takes (None: any)."""
    op = request.get("op")
    try:
        if op == "create":
            if refusal is not None:
                raise WorkerBusy(refusal, retry_after_s=2)
            limit = request.get("max_seconds")  # the join token's call length, if it has one
            agent = request.get("agent")
            agent = agent if isinstance(agent, str) else None
            if agents_only is not None and agent not in agents_only:
                raise WorkerBusy(f"this worker serves only {', '.join(agents_only)}", retry_after_s=2)
            call_id, sdp = await worker.create_call(
                str(request.get("sdp", "")),
                max_seconds=float(limit) if isinstance(limit, int | float) else None,
                agent=agent,
                variables=_strings(request.get("variables")),
                caller=_strings(request.get("caller")),
            )
            return {"ok": True, "call": call_id, "sdp": sdp}
        if op == "resume":
            sdp = await worker.resume_call(str(request.get("call")), str(request.get("sdp", "")))
            return {"ok": True, "sdp": sdp}
        if op == "describe":
            return {"ok": True, "summary": await worker.describe_call(str(request.get("call")))}
        if op == "end":
            await worker.end_call(str(request.get("call")), str(request.get("reason") or "hangup"))
            return {"ok": True}
        return {"ok": False, "error": "internal", "message": f"unknown request {op!r}"}
    except WorkerBusy as exc:
        return {"ok": False, "error": "busy", "message": exc.message, "retry_after": exc.retry_after_s}
    except OfferError as exc:
        return {"ok": False, "error": "offer", "status": exc.status, "message": exc.message}
    except CallNotFound:
        return {"ok": False, "error": "not_found", "message": "no such call"}
    except UnknownAgent as exc:  # its agents file differs from the front door's
        return {"ok": False, "error": "unknown_agent", "message": f"no agent named {exc.args[0]!r}"}
    except Exception as exc:
        logger.exception("request %s failed", op)
        return {"ok": False, "error": "internal", "message": type(exc).__name__}


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def refusal_error(reply: dict[str, Any], call_id: str | None = None) -> Exception:
    """The exception a refusal stands for, for the front door to answer its HTTP request with."""
    error, message = reply.get("error"), str(reply.get("message", ""))
    if error == "offer":
        return OfferError(int(reply.get("status", 400)), message or "bad offer")
    if error == "not_found":
        return CallNotFound(call_id)
    if error == "unknown_agent":
        return UnknownAgent(message)
    retry_after = reply.get("retry_after")
    return WorkerBusy(message or "the worker could not take the request", int(retry_after or 2))
