"""TURN credentials minted per use with coturn's REST-API shared-secret scheme (`use-auth-secret`).

    username   = "<expiry unix time>:<id>"
    credential = base64(HMAC-SHA1(secret, username))

coturn (with `static-auth-secret` set to the same secret) accepts the pair until the expiry time, so no
static password ever reaches a page: `GET /v1/config` hands each page freshly minted credentials and each
worker mints its own for every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any


def turn_credentials(secret: str, user: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid for `ttl_s` seconds from `now`."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers_with_turn(
    static: list[dict[str, Any]], turn_urls: list[str], turn_secret: str | None, ttl_s: float, user: str
) -> list[dict[str, Any]]:
    """The configured ICE servers plus, when a TURN secret is set, the TURN URLs with fresh credentials."""
    if not turn_secret or not turn_urls:
        return list(static)
    username, credential = turn_credentials(turn_secret, user, ttl_s)
    return [*static, {"urls": list(turn_urls), "username": username, "credential": credential}]


def ice_server_source(
    static: list[dict[str, Any]], turn_urls: list[str], turn_secret: str | None, ttl_s: float, who: str
) -> Callable[[], list[dict[str, Any]]]:
    """A function giving the ICE servers for one new peer connection (fresh TURN credentials each time)."""

    def servers() -> list[dict[str, Any]]:
        return ice_servers_with_turn(static, turn_urls, turn_secret, ttl_s, f"{who}-{secrets.token_hex(4)}")

    return servers
