"""Who may start a call: signed join tokens and per-client rate limits on `POST /v1/calls`.

Every call spends someone's Gemini budget, so a server reachable from the internet admits a call only
with a short-lived token that the site's own backend mints with a shared secret:

    from parley.signaling.access import mint_join_token
    token = mint_join_token(secret, ttl_s=300, max_seconds=600, uses=1, subject="user-42")

The browser sends it as `Authorization: Bearer <token>` (or `?token=<token>`). A token is
`base64url(claims) "." base64url(HMAC-SHA256(secret, base64url(claims)))`; claims are JSON with `exp`
(Unix time), an id `jti`, and optionally `sub`, `max_seconds` (call length), `uses` (calls it may start),
`agent` (the only agent it starts) and `variables` (strings the agent's instruction is filled with; they
override the page's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from parley.signaling.errors import error


class TokenError(Exception):
    pass


@dataclass
class JoinClaims:
    expires_at: float
    token_id: str
    subject: str | None = None
    max_seconds: float | None = None
    uses: int | None = None
    agent: str | None = None
    variables: dict[str, str] | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def mint_join_token(
    secret: str,
    ttl_s: float = 300,
    max_seconds: float | None = None,
    uses: int | None = None,
    subject: str | None = None,
    now: float | None = None,
    agent: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> str:
    """A token that admits calls until `ttl_s` from now: at most `uses` of them, each `max_seconds` long,
    of `agent` only (when given), with these `variables`."""
    if not secret:
        raise ValueError("a join secret is needed to mint tokens")
    claims: dict[str, object] = {
        "exp": math.floor((now or time.time()) + ttl_s),
        "jti": secrets.token_urlsafe(12),
    }
    if subject is not None:
        claims["sub"] = subject
    if max_seconds is not None:
        claims["max_seconds"] = max_seconds
    if uses is not None:
        claims["uses"] = uses
    if agent is not None:
        claims["agent"] = agent
    if variables:
        claims["variables"] = dict(variables)
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


def verify_join_token(secret: str, token: str, now: float | None = None) -> JoinClaims:
    """The token's claims, or TokenError saying what is wrong with it."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise TokenError("malformed join token")
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise TokenError("invalid join token")
    try:
        claims = json.loads(_unb64(payload))
        expires_at = float(claims["exp"])
        token_id = str(claims["jti"])
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed join token") from None
    if expires_at < (now or time.time()):
        raise TokenError("the join token has expired")
    max_seconds = claims.get("max_seconds")
    uses = claims.get("uses")
    agent = claims.get("agent")
    variables = claims.get("variables")
    if agent is not None and not isinstance(agent, str):
        raise TokenError("malformed join token")
    if variables is not None and not (
        isinstance(variables, dict) and all(isinstance(v, str) for v in variables.values())
    ):
        raise TokenError("malformed join token")
    return JoinClaims(
        expires_at=expires_at,
        token_id=token_id,
        subject=claims.get("sub"),
        max_seconds=float(max_seconds) if isinstance(max_seconds, int | float) else None,
        uses=int(uses) if isinstance(uses, int) else None,
        agent=agent,
        variables=variables,
    )


class RateLimiter:
    """A token bucket per client: `calls` call set-ups per `per_s` seconds, refilled continuously."""

    def __init__(self, calls: int, per_s: float) -> None:
        self.capacity = float(calls)
        self.rate = calls / per_s
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float | None = None) -> float:
        """0 when admitted, else the seconds until a set-up would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > 10000:  # forget full buckets so the table cannot grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.capacity - 1}
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate


def parse_rate(text: str) -> RateLimiter | None:
    """ "20/60" -> 20 call set-ups per 60 s per client; "0" or "" -> no limit."""
    text = text.strip()
    if text in ("", "0"):
        return None
    calls, _, per = text.partition("/")
    try:
        return RateLimiter(int(calls), float(per or 60))
    except (ValueError, ZeroDivisionError):
        raise SystemExit(f"PARLEY_RATE_LIMIT must look like 20/60, got {text!r}") from None


JOIN_CLAIMS = web.RequestKey("join_claims", JoinClaims)


def call_admission(secret: str | None, limiter: RateLimiter | None) -> Middleware:
    """Guards `POST /v1/calls`: 429 past the client's rate, 401 without a valid token, 403 once used up."""
    used: dict[str, int] = {}

    @web.middleware
    async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v1/calls":
            return await handler(request)
        if limiter is not None:
            wait_s = limiter.take(request.remote or "unknown")
            if wait_s:
                return error(
                    429, "too many calls from this client", **{"Retry-After": str(math.ceil(wait_s))}
                )
        if secret is None or "resume" in request.query:
            # A resume names a live call by its unguessable id; its original token may have expired.
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")
        if not token:
            return error(401, "a join token is required", **{"WWW-Authenticate": "Bearer"})
        try:
            claims = verify_join_token(secret, token)
        except TokenError as exc:
            return error(401, str(exc), **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if claims.uses is not None:
            if used.get(claims.token_id, 0) >= claims.uses:
                return error(403, "this join token has been used up")
            if len(used) > 100000:
                used.clear()  # bounded; tokens are short-lived, so forgetting old ones costs little
            used[claims.token_id] = used.get(claims.token_id, 0) + 1
        request[JOIN_CLAIMS] = claims
        return await handler(request)

    return admission


def refuse_public_without_secret(host: str, secret: str | None, allow_unauthenticated: bool) -> None:
    """Exit unless the server is on loopback, has a join secret, or was told to go without one."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if secret is None and not loopback and not allow_unauthenticated:
        raise SystemExit(
            f"refusing to listen on {host} without PARLEY_JOIN_SECRET: anyone could start calls on your "
            "Gemini budget. Set a join secret, or pass --allow-unauthenticated if that is what you want."
        )
