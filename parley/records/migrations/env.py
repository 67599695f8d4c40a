"""Alembic's environment for Parley's records: runs on the connection `database.upgrade` hands it."""

from __future__ import annotations

from alembic import context

from parley.records.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
