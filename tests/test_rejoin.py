"""A rejoin gives the new connection the whole no-media timeout to send its first packet.

This was the race behind `test_fleet.py::test_calls_spread_over_two_workers_least_loaded_first` failing
on a busy machine: after a rejoin the new connection's uplink had no packet yet, so the no-media watch
measured from the call's creation; a call older than PARLEY_NO_MEDIA_TIMEOUT ended (`no_media`) as soon
as the watch looked, unless the new connection's first RTP packet beat it there (it does when the machine
is idle). `GET /v1/calls/{id}` then answered 404. Here the rejoining connection sends no audio at all, so
the outcome does not depend on the machine's speed.
"""

from __future__ import annotations

import time

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from parley.agent.ice import rtc_configuration
from parley.caller import Caller
from parley.emulator.server import GeminiEmulator
from parley.server import start
from tests.conftest import make_settings
from tests.waiting import wait_until

NO_MEDIA_S = 3.0


async def test_a_rejoin_restarts_the_no_media_clock(emulator: GeminiEmulator) -> None:
    running = await start(make_settings(no_media_timeout_s=NO_MEDIA_S), emulator=emulator)
    url = f"http://127.0.0.1:{running.port}"
    first = Caller(url)
    silent = RTCPeerConnection(rtc_configuration([]))
    try:
        await first.connect(timeout_s=30)
        assert first.call_url is not None
        call_id = first.call_url.rsplit("/", 1)[1]
        call = running.worker.calls[call_id]
        # The call must be older than the no-media timeout when the new connection takes over.
        await wait_until(lambda: time.monotonic() - call.created_at > NO_MEDIA_S + 0.5, 30, "the call to age")
        assert call_id in running.worker.calls

        silent.addTransceiver("audio", direction="recvonly")  # a connection that sends no audio
        await silent.setLocalDescription(await silent.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/calls",
                params={"resume": call_id},
                data=silent.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as response:
                assert response.status == 201, await response.text()
                answer = await response.text()
            rejoined_at = time.monotonic()
            await silent.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            async with http.get(f"{url}/v1/calls/{call_id}") as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["rejoins"] == 1

        await wait_until(lambda: call_id not in running.worker.calls, NO_MEDIA_S + 30, "no_media")
        assert call.end_reason == "no_media"
        # Ended by the watch only after the new connection had the whole timeout (less its check step).
        assert time.monotonic() - rejoined_at >= NO_MEDIA_S - 1.0
    finally:
        await silent.close()
        await first.hang_up()
        await running.stop()
