"""calls and call_events

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
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
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_agent_started_at", "calls", ["agent", "started_at"])
    op.create_index("ix_calls_end_reason", "calls", ["end_reason"])
    op.create_table(
        "call_events",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float(53), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16)),
        sa.Column("text", sa.Text),
        sa.Column("interrupted", sa.Boolean),
        sa.Column("data", sa.JSON),
    )
    op.create_index("ix_call_events_at", "call_events", ["at"])


def downgrade() -> None:
    op.drop_table("call_events")
    op.drop_table("calls")
