"""Durable call records: one row per call, its transcript and timeline, in SQLite or PostgreSQL.

The per-call media room (parley/agent) never imports this room: calls report to `CallRecorder` through
the `CallObserver` door, and every database write goes through `RecordWriter`'s bounded queue.
"""
