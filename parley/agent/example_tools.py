"""The example tool, offered with `parley serve --example-tools`."""

from __future__ import annotations

from datetime import UTC, datetime

from parley.agent.tools import tool


@tool
def current_time(timezone: str = "UTC") -> dict[str, str]:
    """The current date and time (UTC), for questions like 'what time is it?'."""
    now = datetime.now(UTC)
    return {"utc": now.isoformat(timespec="seconds"), "requested_timezone": timezone}
