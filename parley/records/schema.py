"""The tables, in SQLAlchemy Core. Times are Unix seconds (UTC) as floats: portable and easy to range over.

Changing a table means a new Alembic revision in migrations/versions/ as well.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("agent", sa.String(128)),
    sa.Column("origin", sa.String(512)),
    sa.Column("client_address", sa.String(64)),
    sa.Column("worker", sa.String(128)),
    sa.Column("model", sa.String(128)),
    sa.Column("started_at", sa.Float(53)),
    sa.Column("connected_at", sa.Float(53)),
    sa.Column("ended_at", sa.Float(53)),
    sa.Column("duration_s", sa.Float(53)),
    sa.Column("end_reason", sa.String(64)),
    sa.Column("turns", sa.Integer),
    sa.Column("rejoins", sa.Integer),
    sa.Column("connections", sa.Integer),
    sa.Column("goaways", sa.Integer),
    sa.Column("reconnects", sa.Integer),
    sa.Column("fresh_sessions", sa.Integer),
    sa.Column("tool_calls", sa.Integer),
    sa.Column("tokens", sa.JSON),
    sa.Column("cost_usd", sa.Float(53)),
    sa.Column("latency", sa.JSON),
    sa.Column("summary", sa.JSON),
    sa.Column("recording", sa.String(255)),
    sa.Index("ix_calls_started_at", "started_at"),
    sa.Index("ix_calls_agent_started_at", "agent", "started_at"),
    sa.Index("ix_calls_end_reason", "end_reason"),
)

# The transcript and the timeline: utterances, tool calls and results, grounding, turns, session events.
call_events = sa.Table(
    "call_events",
    metadata,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),  # the key makes a retried write land once
    sa.Column("at", sa.Float(53), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("role", sa.String(16)),
    sa.Column("text", sa.Text),
    sa.Column("interrupted", sa.Boolean),
    sa.Column("data", sa.JSON),
    sa.Index("ix_call_events_at", "at"),
)

# Webhooks submitted and not yet delivered (or given up on), by the process that sends them: a process
# that starts under a dead one's name, or the front door of one that died, sends them (webhooks.py).
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("event", sa.JSON, nullable=False),
    sa.Index("ix_webhook_outbox_owner", "owner", "created_at"),
)
