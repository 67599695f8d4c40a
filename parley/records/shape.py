"""A call's record as the API and the webhooks show it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def present(row: dict[str, Any], full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "state": "ended" if row.get("ended_at") is not None else "live",
        "agent": row.get("agent"),
        "origin": row.get("origin"),
        "client_address": row.get("client_address"),
        "worker": row.get("worker"),
        "model": row.get("model"),
        "started_at": iso(row.get("started_at")),
        "connected_at": iso(row.get("connected_at")),
        "ended_at": iso(row.get("ended_at")),
        "duration_s": row.get("duration_s"),
        "end_reason": row.get("end_reason"),
        "turns": row.get("turns"),
        "rejoins": row.get("rejoins"),
        "gemini": {
            "connections": row.get("connections"),
            "goaways": row.get("goaways"),
            "reconnects": row.get("reconnects"),
            "fresh_sessions": row.get("fresh_sessions"),
            "tool_calls": row.get("tool_calls"),
        },
        "tokens": row.get("tokens"),
        "cost_usd": row.get("cost_usd"),
        "latency": row.get("latency"),
        "recording": f"/v1/calls/{row['id']}/recording" if row.get("recording") else None,
    }
    if full:
        out["summary"] = row.get("summary")
    return out
