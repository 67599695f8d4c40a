"""Hostile input: thousands of generated offers, bodies and headers. No 5xx, no crash, no stuck call,
and the server still answers a good call afterwards."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.agent.ice import rtc_configuration
from parley.agent.sdp import OfferError, check_offer
from parley.caller import Caller
from parley.server import Running


async def good_offer() -> str:
    pc = RTCPeerConnection(rtc_configuration([]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def mutate(sdp: str, rng: random.Random) -> str:
    """A real offer, damaged the ways broken clients and attackers damage them."""
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        i = rng.randrange(len(lines))
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif choice == 2:
            line = lines[i]
            cut = rng.randrange(len(line) + 1)
            lines[i] = line[:cut]
        elif choice == 3:
            lines[i] = lines[i] + "".join(rng.choice("0123456789:/;= -abcxyz\x00\xff") for _ in range(8))
        elif choice == 4:
            lines[i] = lines[i].replace("audio", rng.choice(["video", "application", "", "audio audio"]))
        elif choice == 5:
            lines[i] = lines[i].replace("opus", rng.choice(["OPUS", "opus2", "", "pcmu"]))
        else:
            lines.insert(i, "m=audio 9 UDP/TLS/RTP/SAVPF 111")
    return "\r\n".join(lines)


def test_sdp_checker_never_crashes_on_damaged_offers() -> None:
    sdp = asyncio.run(good_offer())
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    for _ in range(3000):
        try:
            check_offer(mutate(sdp, rng))
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except OfferError as refused:
            assert refused.status in (400, 422) and refused.message
            outcomes[str(refused.status)] = outcomes.get(str(refused.status), 0) + 1
    assert outcomes.get("400") and outcomes.get("ok")  # the damage both broke and spared offers


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=2048), st.text(max_size=2048).map(str.encode)),
    content_type=st.sampled_from(
        [
            "application/sdp",
            "application/json",
            "text/plain",
            "",
            "application/sdp; charset=utf-8",
            "multipart/form-data",
            "application/json; charset=latin-1",
        ]
    ),
    path=st.sampled_from(
        ["/v1/calls", "/v1/calls/x", "/v1/calls/../healthz", "/v1/calls?resume=nope", "/v1/config"]
    ),
    method=st.sampled_from(["POST", "GET", "DELETE", "PUT", "OPTIONS"]),
    header=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=64),
)
def test_http_api_never_answers_5xx(
    fuzz_server: tuple[asyncio.AbstractEventLoop, str, Running],
    body: bytes,
    content_type: str,
    path: str,
    method: str,
    header: str,
) -> None:
    loop, url, _ = fuzz_server

    async def one() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                url + path,
                data=body,
                headers={"Content-Type": content_type, "Origin": header or "null", "Authorization": header},
            ) as r:
                await r.read()
                return r.status

    status = loop.run_until_complete(one())
    assert status < 500, (method, path, content_type, body[:100])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_damaged_offers_through_the_server_leave_no_call_behind(
    fuzz_server: tuple[asyncio.AbstractEventLoop, str, Running], seed: int
) -> None:
    loop, url, _ = fuzz_server

    async def one() -> None:
        sdp = mutate(await good_offer(), random.Random(seed))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + "/v1/calls", data=sdp, headers={"Content-Type": "application/sdp"}
            ) as r:
                await r.read()
                assert r.status in (201, 400, 422), r.status
                if r.status == 201:
                    async with http.delete(url + r.headers["Location"]) as d:
                        assert d.status == 204

    loop.run_until_complete(one())


def test_after_the_fuzzing_a_good_call_still_works(
    fuzz_server: tuple[asyncio.AbstractEventLoop, str, Running],
) -> None:
    loop, url, server = fuzz_server

    async def settle_and_call() -> None:
        for _ in range(100):
            if not server.worker.calls:
                break
            await asyncio.sleep(0.05)
        assert server.worker.calls == {}  # nothing stuck
        caller = Caller(url)
        await caller.connect()
        assert await caller.hang_up() == 204

    loop.run_until_complete(settle_and_call())
