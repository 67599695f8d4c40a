"""Which agent a new call gets, and whether it may: the request's choice, its join token's, its origin.

The page names the agent (`?agent=NAME`, `"agent"` in the JSON offer) and sends `"variables"`; a join
token may carry an `agent` (the call gets that agent and no other) and `variables`, which override the
page's: the site's backend minted the token, the page is the caller's to change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from aiohttp import web

from parley.profiles import AdmissionError, ProfileStore
from parley.profiles.catalog import Admitted, Catalog
from parley.signaling.access import JoinClaims

# The agents in force, and the server's own allowed origins (PARLEY_ALLOWED_ORIGINS).
PROFILES: web.AppKey[tuple[ProfileStore, list[str]]] = web.AppKey("profiles")


def cross_origin(request: web.Request) -> str | None:
    """The request's Origin when it is another site's; None for this server's own page or no browser.
    Same origin is judged on host and port only (a TLS-terminating proxy makes the scheme differ)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    try:
        host = urlsplit(origin).netloc
    except ValueError:  # not a URL ("//[": an unclosed IPv6 bracket): no site's, so never this one's
        return origin
    return None if host.lower() == request.host.lower() else origin


def origins_in_force(server_origins: Iterable[str], profiles: ProfileStore) -> Callable[[], set[str]]:
    """The origins the API answers: the server's and every agent's, as of the profiles in force."""
    own = {origin.strip().rstrip("/").lower() for origin in server_origins if origin.strip()}
    seen: list[tuple[Catalog, set[str]]] = []

    def allowed() -> set[str]:
        catalog = profiles.catalog
        if not seen or seen[0][0] is not catalog:  # a reload made a new catalog
            seen[:] = [(catalog, own | catalog.origins())]
        return seen[0][1]

    return allowed


def admit_call(
    request: web.Request, agent: str | None, variables: Mapping[str, object], claims: JoinClaims | None
) -> Admitted:
    """The agent and variables of a new call; AdmissionError (404, 403, 400) when it may not start."""
    store, server_origins = request.app[PROFILES]
    if claims is not None and claims.agent is not None:
        if agent is not None and agent != claims.agent:
            raise AdmissionError(403, f"this join token is for the agent {claims.agent!r}, not {agent!r}")
        agent = claims.agent
    merged = {**variables, **(claims.variables if claims is not None and claims.variables else {})}
    return store.catalog.admit(agent, cross_origin(request), server_origins, merged)


def agent_config(request: web.Request, agent: str | None) -> dict[str, object]:
    """What GET /v1/config says of the agent a page names (None: the default one): its name, its model
    when the profile names one, and whether it takes video (a page offers no camera for one that does
    not). AdmissionError 404 for an unknown agent."""
    store, _ = request.app[PROFILES]
    catalog = store.catalog
    name = catalog.default_agent if agent is None else agent
    if name not in catalog:
        raise AdmissionError(404, f"no agent named {name!r}")
    profile = catalog.get(name)
    return {"agent": name, "takesVideo": profile.video, **({"model": profile.model} if profile.model else {})}
