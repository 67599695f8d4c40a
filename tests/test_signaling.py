"""The HTTP API: WHIP-style set-up, JSON set-up, and a clear error for every bad request."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from parley.agent.ice import rtc_configuration
from parley.caller import Caller
from parley.server import Running


async def real_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(rtc_configuration([]))
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_sdp_offer_gets_201_location_and_an_answer_asking_for_fec(url: str, server: Running) -> None:
    pc, offer = await real_offer()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/calls", data=offer, headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 201
                assert r.content_type == "application/sdp"
                location = r.headers["Location"]
                answer = await r.text()
            assert location.startswith("/v1/calls/")
            assert answer.startswith("v=0") and "useinbandfec=1" in answer
            async with http.get(url + location) as r:
                assert r.status == 200
                assert (await r.json())["call"] == location.rsplit("/", 1)[1]
            async with http.delete(url + location) as r:
                assert r.status == 204
            async with http.delete(url + location) as r:
                assert r.status == 404
    finally:
        await pc.close()


async def test_json_offer_gets_a_json_answer(url: str) -> None:
    pc, offer = await real_offer()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/calls", json={"sdp": offer, "type": "offer"}) as r:
                assert r.status == 201
                body = await r.json()
            assert body["type"] == "answer" and body["sdp"].startswith("v=0") and body["id"]
            assert r.headers["Location"] == f"/v1/calls/{body['id']}"
            async with http.delete(f"{url}/v1/calls/{body['id']}") as r:
                assert r.status == 204
    finally:
        await pc.close()


AUDIO_WITHOUT_OPUS = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", b"v=0", 415),
        ("application/sdp", b"this is not sdp", 400),
        ("application/sdp", b"\xff\xfe\x00", 400),
        ("application/json", b"{not json", 400),
        ("application/json", json.dumps({"type": "offer"}).encode(), 400),
        ("application/json", json.dumps({"sdp": "v=0", "type": "answer"}).encode(), 400),
        ("application/sdp", AUDIO_WITHOUT_OPUS.encode(), 422),
        ("application/sdp", b"v=0\r\n" + b"a=x\r\n" * 20000, 413),
    ],
)
async def test_bad_requests_get_a_clear_error_and_change_nothing(
    url: str, server: Running, content_type: str, body: bytes, status: int
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/calls", data=body, headers={"Content-Type": content_type}) as r:
            assert r.status == status
            assert (await r.json())["error"]
    assert server.worker.calls == {}
    # and a good call still works afterwards
    caller = Caller(url)
    await caller.connect()
    assert await caller.hang_up() == 204


async def test_unknown_calls_are_404(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{url}/v1/calls/nope") as r:
                assert r.status == 404
                assert (await r.json())["error"] == "no such call"


async def test_healthz_and_config(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as r:
            health = await r.json()
        async with http.get(f"{url}/v1/config") as r:
            config = await r.json()
    assert health["status"] == "ok" and health["active_calls"] == 0
    assert config["emulator"] is True and config["iceServers"] == []
