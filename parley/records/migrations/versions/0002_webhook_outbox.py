"""webhook_outbox: webhooks not yet delivered, so a process that dies does not take them with it

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("event", sa.JSON, nullable=False),
    )
    op.create_index("ix_webhook_outbox_owner", "webhook_outbox", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_outbox_owner", "webhook_outbox")
    op.drop_table("webhook_outbox")
