"""GeminiEmulator: an offline stand-in for the Gemini Live service, over wss on loopback.

Point the real google-genai SDK at it with
    genai.Client(api_key="any", http_options=types.HttpOptions(
        base_url=emu.base_url, api_version="v1beta",
        async_client_args={"ssl": emu.client_ssl_context()}))
or with env GOOGLE_GEMINI_BASE_URL=emu.base_url and SSL_CERT_FILE=emu.ca_file.
It answers every user turn by speaking the user's own audio back.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import tempfile
import time

from aiohttp import web

from . import certs
from .options import EmulatorOptions
from .protocol import CLOSE_GOING_AWAY, ProtocolError
from .routes import authenticate, match_route
from .session import LiveSession
from .state import ConnectionRecord, SessionStore

__all__ = ["ConnectionRecord", "EmulatorOptions", "GeminiEmulator"]

log = logging.getLogger("emulator")

# The SDK's websockets client accepts up to 1 MiB per message; clients may send large
# chunks (e.g. whole files in tests), so allow more than that inbound.
_MAX_CLIENT_MESSAGE = 16 * 1024 * 1024


class GeminiEmulator:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: EmulatorOptions | None = None
    ) -> None:
        self.host = host
        self.options: EmulatorOptions = options if options is not None else EmulatorOptions()
        self.connections: list[ConnectionRecord] = []
        self.store = SessionStore()
        self._requested_port = port
        self._port: int | None = None
        self._audio_seconds = 0.0
        self._runner: web.AppRunner | None = None
        self._certs: certs.CertPaths | None = None
        self._temp_dir: str | None = None
        self._sessions: set[LiveSession] = set()
        self.tokens_issued = 0

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Make the certificate and bind (port 0 picks an ephemeral port)."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        if self.options.cert_dir is not None:
            self._certs = certs.load_or_generate(self.options.cert_dir)
        else:
            self._temp_dir = tempfile.mkdtemp(prefix="parley-emulator-")
            self._certs = certs.generate(self._temp_dir)
        app = web.Application()
        app.router.add_post("/token", self._oauth_token)
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        ssl_ctx = certs.server_context(self._certs)
        site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=ssl_ctx)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._remove_temp()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("Gemini Live emulator listening on %s (CA %s)", self.base_url, self.ca_file)

    async def stop(self) -> None:
        """Close every socket (1001 going away) and remove the temporary certificates."""
        sessions = list(self._sessions)
        await asyncio.gather(
            *(s.close(CLOSE_GOING_AWAY, "The service is shutting down.") for s in sessions),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._remove_temp()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def ca_file(self) -> str:
        if self._certs is None:
            raise RuntimeError("emulator not started")
        return self._certs.ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting only the emulator's CA."""
        if self._certs is None:
            raise RuntimeError("emulator not started")
        return certs.client_context(self._certs)

    @property
    def audio_seconds_received(self) -> float:
        """Seconds of user audio received over all connections."""
        return self._audio_seconds

    def count_audio(self, seconds: float) -> None:
        self._audio_seconds += seconds

    async def go_away(self, time_left_s: float) -> None:
        """Scenario action: every open connection gets a goAway now and ends `time_left_s` later."""
        await asyncio.gather(*(s.go_away_now(time_left_s) for s in list(self._sessions)))

    def open_connections(self) -> int:
        """Live connections currently open."""
        return len(self._sessions)

    # ------------------------------------------------------------------ internals

    def _remove_temp(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    async def _oauth_token(self, request: web.Request) -> web.Response:
        """Google's OAuth2 token endpoint, so Vertex AI's Application Default Credentials work offline:
        an ADC file whose `token_uri` is `{base_url}/token` gets a bearer token here."""
        form = await request.post()
        if form.get("grant_type") not in ("refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        self.tokens_issued += 1
        return web.json_response(
            {
                "access_token": f"ya29.emulator-{self.tokens_issued}",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = match_route(request.path)
        if route is None:
            raise web.HTTPNotFound(text="Not found: this server only speaks the Gemini Live WebSocket API.\n")
        ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_CLIENT_MESSAGE, timeout=5.0)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="Expected a WebSocket upgrade.\n")
        await ws.prepare(request)
        record = ConnectionRecord(
            path=request.path_qs,
            endpoint=route.endpoint,
            api_version=route.api_version,
            auth_kind=None,
            credential=None,
        )
        self.connections.append(record)
        session = LiveSession(self, ws, request, route, record)
        self._sessions.add(session)
        try:
            try:
                auth = authenticate(route, request.headers, request.rel_url.query, self.options.api_keys)
            except ProtocolError as exc:
                await session.close(exc.code, exc.reason)
                record.ended_at = time.time()
                return ws
            record.auth_kind = auth.kind
            record.credential = auth.credential
            await session.run()
        finally:
            self._sessions.discard(session)
        return ws
