"""Vertex AI credentials kept fresh off the event loop.

The google-genai SDK refreshes Application Default Credentials synchronously inside `live.connect()`
when they are missing or expired: a blocking HTTPS round trip that would stall every call in the
process. Parley loads them once, refreshes them in a thread before they expire, and hands the SDK
credentials that are always valid.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import google.auth
import google.auth.exceptions
from google.auth.transport.requests import Request

logger = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
REFRESH_AHEAD = datetime.timedelta(minutes=5)


class FreshCredentials:
    def __init__(self) -> None:
        self.credentials: Any = None
        self.project: str | None = None

    def load(self) -> bool:
        """Find Application Default Credentials; False when there are none (the SDK will say why)."""
        try:
            self.credentials, self.project = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            logger.warning("no Application Default Credentials for Vertex AI: %s", exc)
            return False
        return True

    def _needs_refresh(self) -> bool:
        creds = self.credentials
        if not creds.token or not creds.valid:
            return True
        expiry = getattr(creds, "expiry", None)
        if expiry is None:
            return False
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        return bool(expiry - now < REFRESH_AHEAD)

    async def keep_fresh(self, check_every_s: float = 30.0) -> None:
        while True:
            if self._needs_refresh():
                try:
                    await asyncio.to_thread(self.credentials.refresh, Request())
                except google.auth.exceptions.GoogleAuthError as exc:
                    logger.warning("refreshing Vertex AI credentials failed: %s", type(exc).__name__)
            await asyncio.sleep(check_every_s)
