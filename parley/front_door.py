"""The front door every serving command puts before its calls: the HTTP API, the page and the widget,
with the settings' origins, join tokens and rate limit. `parley serve` puts it before its worker,
`--processes` before its media processes, `parley signaling` before a fleet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from parley.agent.turn_credentials import ice_server_source
from parley.profiles import ProfileStore
from parley.settings import Settings
from parley.signaling.access import call_admission, parse_rate
from parley.signaling.app import CallHost, PageConfig, create_app
from parley.signaling.records_api import CallRecords

WEB_ROOT = Path(__file__).resolve().parent / "web"


def web_root(settings: Settings) -> Path:
    """The page, the widget and their modules: inside the package, unless PARLEY_WEB_ROOT says otherwise."""
    return Path(settings.web_root) if settings.web_root else WEB_ROOT


def page_config_source(settings: Settings, emulator: Callable[[], bool]) -> PageConfig:
    """GET /v1/config, made for each page: the ICE servers (with TURN credentials of its own when a TURN
    secret is set), whether the agent is the offline emulator, the model, and the video the agent keeps
    (the page sends no more than that)."""
    ice = ice_server_source(
        settings.ice_servers, settings.turn_urls, settings.turn_secret, settings.turn_ttl_s, "web"
    )

    def make() -> dict[str, Any]:
        video = {"fps": settings.video_fps, "maxSide": settings.video_max_side}
        return {
            "iceServers": ice(),
            "emulator": emulator(),
            "model": settings.model,
            "video": video,
            "recorded": settings.record_audio,  # the page says "this call is recorded"
        }

    return make


def front_door(
    settings: Settings,
    host: CallHost,
    profiles: ProfileStore,
    records: CallRecords | None,
    offline: Callable[[], bool],
) -> web.Application:
    """The HTTP API and the page in front of `host` (a worker, a fleet, media processes), with the
    settings' allowed origins, join tokens and rate limit. `offline`: whether the agent is the emulator."""
    return create_app(
        host,
        web_root(settings),
        page_config_source(settings, offline),
        allowed_origins=settings.allowed_origins,
        admission=call_admission(settings.join_secret, parse_rate(settings.rate_limit)),
        records=records,
        admin_token=settings.admin_token,
        profiles=profiles,
        record_client_address=settings.record_client_address,
    )
