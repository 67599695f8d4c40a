"""Which local addresses aiortc offers as ICE host candidates, and the peer connection configuration.

aioice lists every interface address except 127.0.0.1, so two peers on one machine with no other
route (tests, a laptop offline) never connect. Parley offers loopback too, or exactly the addresses a
deployment names (PARLEY_ICE_HOST_ADDRESSES), e.g. the one a 1:1 NAT forwards to.
"""

from __future__ import annotations

from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_aioice_host_addresses = aioice.ice.get_host_addresses


def offer_host_addresses(addresses: list[str] | None) -> None:
    """Make aioice gather on `addresses`; None means every address it finds plus 127.0.0.1."""

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if addresses is not None:
            return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
        found = _aioice_host_addresses(use_ipv4, use_ipv6)
        return [*found, "127.0.0.1"] if use_ipv4 and "127.0.0.1" not in found else found

    aioice.ice.get_host_addresses = host_addresses


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """An explicit (possibly empty) server list: aiortc's default adds Google's STUN server, and an
    unreachable STUN server stalls every answer for 5 s."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers
        ]
    )
