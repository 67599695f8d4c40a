"""The Live endpoints' URL paths and how each one authenticates.

Credential failures are reported the way the real service does it: the WebSocket upgrade
succeeds and the socket is then closed with a code, rather than an HTTP 401/403 on the
upgrade. That is what the SDK can surface as `errors.APIError(code, reason)`; an HTTP
refusal would instead escape as a raw `websockets` InvalidStatus. Missing credentials are
PERMISSION_DENIED ("unregistered callers") -> 1008; a key that is present but invalid is
INVALID_ARGUMENT ("API key not valid") -> 1007, as seen from the real service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .protocol import CLOSE_INVALID_ARGUMENT, CLOSE_POLICY, ProtocolError

# A trailing slash on the SDK's base_url gives "//ws/...": accept any number of slashes.
_DEVELOPER = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.(?P<ver>v[0-9a-z]+)\.GenerativeService\."
    r"(?P<method>BidiGenerateContent(?:Constrained)?)/*$"
)
_VERTEX = re.compile(
    r"^/+ws/google\.cloud\.aiplatform\.(?P<ver>v[0-9a-z]+)\.LlmBidiService/BidiGenerateContent/*$"
)

_NO_IDENTITY = (
    "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity."
)


@dataclass(frozen=True)
class Route:
    endpoint: str  # "developer", "constrained" or "vertex"
    api_version: str


@dataclass(frozen=True)
class Auth:
    kind: str  # "api_key", "ephemeral_token" or "bearer"
    credential: str


def match_route(path: str) -> Route | None:
    m = _DEVELOPER.match(path)
    if m:
        endpoint = "constrained" if m.group("method").endswith("Constrained") else "developer"
        return Route(endpoint=endpoint, api_version=m.group("ver"))
    m = _VERTEX.match(path)
    if m:
        return Route(endpoint="vertex", api_version=m.group("ver"))
    return None


def _authorization(headers: Mapping[str, str], scheme: str) -> str | None:
    value = headers.get("Authorization", "")
    prefix = scheme + " "
    if value[: len(prefix)].lower() == prefix.lower():
        token = value[len(prefix) :].strip()
        return token or None
    return None


def authenticate(
    route: Route, headers: Mapping[str, str], query: Mapping[str, str], api_keys: list[str] | None
) -> Auth:
    """The caller's credential, or ProtocolError with the close code the service would use."""
    if route.endpoint == "constrained":
        token = _authorization(headers, "Token") or query.get("access_token") or None
        if token is None:
            raise ProtocolError(CLOSE_POLICY, _NO_IDENTITY)
        if not token.startswith("auth_tokens/"):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid ephemeral token: expected auth_tokens/...")
        return Auth("ephemeral_token", token)

    key = headers.get("x-goog-api-key") or query.get("key") or None
    if key is not None:
        if api_keys is not None and key not in api_keys:
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "API key not valid. Please pass a valid API key.")
        return Auth("api_key", key)
    bearer = _authorization(headers, "Bearer") or query.get("access_token") or None
    if bearer is not None:
        return Auth("bearer", bearer)
    raise ProtocolError(CLOSE_POLICY, _NO_IDENTITY)
