"""Webhooks: a real HTTP receiver gets call.started and call.ended (with the record), signed so that it
can check them the way README.md shows; a failing receiver is retried, a dead one dropped and counted."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from parley.emulator.server import GeminiEmulator
from parley.records.webhooks import WebhookSender, sign, verify_signature
from parley.server import start
from tests.conftest import make_settings
from tests.test_records import recorded, talk
from tests.waiting import wait_until

SECRET = "webhook-secret-for-tests"
SHOP = "https://shop.example"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as README.md gives it."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    timestamp, given = int(parts["t"]), parts["v1"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given) and abs(time.time() - timestamp) <= tolerance_s


@dataclass
class Receiver:
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    refuse_first: int = 0
    bad_signatures: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(refuse_first=1)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers.get("Parley-Signature", "t=0,v1="), body):
            state.bad_signatures += 1
            return web.Response(status=400)
        if state.refused < state.refuse_first:
            state.refused += 1
            return web.Response(status=503)
        state.events.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("keep_address", [True, False], ids=["addresses-kept", "addresses-not-kept"])
async def test_call_started_and_ended_reach_the_receiver_signed_and_retried(
    emulator: GeminiEmulator, receiver: Receiver, keep_address: bool, tmp_path: Path
) -> None:
    settings = make_settings(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        database_url=f"sqlite:///{tmp_path}/r.db",
        allowed_origins=[SHOP],
        record_client_address=keep_address,
    )
    running = await start(settings, emulator=emulator)
    assert running.webhooks is not None
    running.webhooks.retry_initial_s = 0.1
    url = f"http://127.0.0.1:{running.port}"
    try:
        call_id = await talk(url, origin=SHOP)  # as the shop's page embedding the widget would
        await wait_until(lambda: len(receiver.events) >= 2, 20, "both webhooks")
        stored = await recorded(url, call_id)
    finally:
        await running.stop()
    started, ended = receiver.events
    assert receiver.refused == 1 and receiver.bad_signatures == 0  # the refused one came again
    assert started["type"] == "call.started" and ended["type"] == "call.ended"
    assert started["call"]["id"] == ended["call"]["id"] and started["id"] != ended["id"]
    record = ended["call"]
    assert record["state"] == "ended" and record["end_reason"] == "hangup" and record["turns"] >= 1
    assert record["started_at"] and record["ended_at"] and record["tokens"]["input"]["AUDIO"] > 0
    assert record["cost_usd"] > 0 and record["summary"]["gemini"]["connections"] == 1
    # Where the call came from: the page's origin always, the client's address only when asked to keep it.
    address = "127.0.0.1" if keep_address else None
    for call in (started["call"], record, stored):
        assert (call["origin"], call["client_address"]) == (SHOP, address), call


def test_a_signature_is_refused_when_altered_or_old() -> None:
    body = b'{"type":"call.ended"}'
    now = int(time.time())
    assert verify_signature(SECRET, sign(SECRET, body, now), body)
    assert not verify_signature(SECRET, sign(SECRET, body, now), body + b" ")
    assert not verify_signature("another secret", sign(SECRET, body, now), body)
    assert not verify_signature(SECRET, sign(SECRET, body, now - 3600), body)  # a replay, an hour on
    assert not verify_signature(SECRET, "garbage", body)


async def test_a_receiver_that_never_answers_is_given_up_on_and_counted(receiver: Receiver) -> None:
    receiver.refuse_first = 10**6
    sender = WebhookSender(receiver.url, SECRET, attempts=3, retry_initial_s=0.05, retry_max_s=0.1)
    sender.start()
    try:
        assert sender.submit("call.started", {"id": "x"})
        await wait_until(lambda: sender.dropped == 1, 20, "the webhook to be given up on")
        assert sender.failures == 3 and receiver.refused == 3 and sender.delivered == 0
    finally:
        await sender.stop(timeout_s=1)
