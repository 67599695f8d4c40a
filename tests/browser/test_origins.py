"""The origin allowlist (PARLEY_ALLOWED_ORIGINS) at the HTTP level: CORS for allowed origins, 403 for
the others, same origin always. The browser tests show the same from a real page."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from parley.emulator.server import GeminiEmulator
from parley.server import Running
from parley.settings import Settings
from tests.browser.conftest import start_server

SHOP = "https://shop.example"


@pytest.fixture
async def shop_server(emulator: GeminiEmulator) -> AsyncIterator[Running]:
    running = await start_server(emulator, allowed_origins=["https://Shop.example/", "https://other.example"])
    try:
        yield running
    finally:
        await running.stop()


async def test_requests_without_an_origin_or_from_the_same_origin_pass(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/config") as response:
            assert response.status == 200
        async with http.get(f"{url}/v1/config", headers={"Origin": url}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_disallowed_origin_gets_403_with_a_json_error(server: Running, url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/v1/config"),
            ("POST", "/v1/calls"),
            ("DELETE", "/v1/calls/x"),
            ("GET", "/v1/calls/x"),
            ("OPTIONS", "/v1/calls"),
        ]:
            headers = {"Origin": SHOP, "Access-Control-Request-Method": "POST"}
            async with http.request(method, f"{url}{path}", headers=headers, data=b"v=0") as response:
                assert response.status == 403, (method, path)
                body = await response.json()
                assert SHOP in body["error"] and "PARLEY_ALLOWED_ORIGINS" in body["error"]
                # readable by that page, so a widget there can say why
                assert response.headers["Access-Control-Allow-Origin"] == SHOP
    assert server.worker.calls_started == 0


async def test_an_allowed_origin_gets_cors_headers_and_preflights(shop_server: Running) -> None:
    url = f"http://127.0.0.1:{shop_server.port}"
    async with aiohttp.ClientSession() as http:
        preflight = {
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        for path in ("/v1/calls", "/v1/calls/abc", "/v1/config"):
            async with http.options(f"{url}{path}", headers=preflight) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == SHOP
                assert {"POST", "DELETE", "GET"} <= {
                    m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")
                }
                assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
        async with http.get(f"{url}/v1/config", headers={"Origin": SHOP}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == SHOP
            assert response.headers["Vary"] == "Origin"
        # errors, raised or returned, carry the headers too
        headers = {"Origin": SHOP, "Content-Type": "text/plain"}
        async with http.post(f"{url}/v1/calls", headers=headers, data=b"x") as response:
            assert response.status == 415
            assert response.headers["Access-Control-Allow-Origin"] == SHOP
        async with http.get(f"{url}/v1/calls/nope", headers={"Origin": SHOP}) as response:
            assert response.status == 404
            assert response.headers["Access-Control-Allow-Origin"] == SHOP
            assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
        async with http.get(f"{url}/v1/config", headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 403


async def test_scripts_are_public_and_the_rest_is_not_shared(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for script in ("/widget.js", "/parley-client.js", "/client/signaling.js"):
            async with http.get(f"{url}{script}", headers={"Origin": SHOP}) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "*"
                assert "javascript" in response.headers["Content-Type"]
        async with http.get(f"{url}/healthz", headers={"Origin": SHOP}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_star_allows_any_origin(emulator: GeminiEmulator) -> None:
    running = await start_server(emulator, allowed_origins=["*"])
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{running.port}/v1/config"
            async with http.get(url, headers={"Origin": "https://anyone.example"}) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "https://anyone.example"
    finally:
        await running.stop()


def test_the_allowlist_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_ALLOWED_ORIGINS", raising=False)
    assert Settings.from_env().allowed_origins == []
    monkeypatch.setenv("PARLEY_ALLOWED_ORIGINS", "https://a.example, https://b.example:8443,")
    assert Settings.from_env().allowed_origins == ["https://a.example", "https://b.example:8443"]
