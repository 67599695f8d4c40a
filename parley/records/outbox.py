"""The webhook outbox in the records database: each webhook is kept from its submission until it is
delivered or given up on, under the name of the process sending it. What a dead process left is
claimed by the next one to run under its name, or by the front door that saw it die."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.records.schema import webhook_outbox


class WebhookOutbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def keep(self, owner: str, event: dict[str, Any]) -> None:
        row = {"id": event["id"], "owner": owner, "created_at": event["created"], "event": event}
        async with self.engine.begin() as connection:
            await connection.execute(sa.insert(webhook_outbox).values(**row))

    async def done(self, event_id: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(webhook_outbox).where(webhook_outbox.c.id == event_id))

    async def owners(self, prefix: str) -> set[str]:
        """The names whose webhooks wait here, of those that start with `prefix`."""
        async with self.engine.connect() as connection:
            query = sa.select(webhook_outbox.c.owner).where(webhook_outbox.c.owner.startswith(prefix))
            return {str(owner) for owner in (await connection.execute(query.distinct())).scalars()}

    async def claim(self, owner: str, claimant: str) -> list[dict[str, Any]]:
        """The webhooks `owner` left, oldest first, now `claimant`'s to send (one statement moves them,
        so two claimants do not both send one)."""
        async with self.engine.begin() as connection:
            rows = await connection.execute(
                sa.update(webhook_outbox)
                .where(webhook_outbox.c.owner == owner)
                .values(owner=claimant)
                .returning(webhook_outbox.c.event, webhook_outbox.c.created_at)
            )
            return [dict(row.event) for row in sorted(rows, key=lambda row: row.created_at)]
