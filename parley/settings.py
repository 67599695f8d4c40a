"""Settings for every Parley process, read from the environment and overridden by command-line flags.

Secrets are not settings: the Gemini key stays in the environment where the google-genai SDK reads it
itself, so no Parley object ever holds it and no repr, log line or error message can show it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

GEMINI_ENV_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_ice_servers(raw: str) -> list[dict[str, Any]]:
    """ICE servers as JSON (`[{"urls": ..., "username": ..., "credential": ...}]`) or comma-separated URLs."""
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith("["):
        servers = json.loads(raw)
        if not isinstance(servers, list) or not all(isinstance(s, dict) and "urls" in s for s in servers):
            raise SystemExit("PARLEY_ICE_SERVERS must be a JSON list of objects with 'urls'")
        return servers
    return [{"urls": url.strip()} for url in raw.split(",") if url.strip()]


def gemini_configured() -> bool:
    """True when the environment points the SDK at a real Gemini (a key, or Vertex AI)."""
    if any(os.environ.get(k) for k in GEMINI_ENV_KEYS):
        return True
    return os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true", "yes")


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # "gemini" uses the SDK's own environment; "emulator" starts the bundled emulator in-process;
    # "auto" picks gemini when a key (or Vertex AI) is configured.
    backend: str = "auto"
    model: str = "gemini-3.8-live"
    voice: str = "Kore"
    system_instruction: str = "You are a helpful voice assistant. Keep your answers short and conversational."
    # The SDK defaults to v1 for the Developer API; Live is documented on v1beta.
    gemini_api_version: str = "v1beta"
    # Gemini pongs have been measured at 8-30 s; the SDK's 20 s ping timeout kills healthy sockets.
    gemini_ping_interval_s: float = 20.0
    gemini_ping_timeout_s: float = 60.0
    # 20 ms is one Opus frame: each packet goes to Gemini as it arrives, adding no buffering delay.
    uplink_chunk_ms: int = 20
    no_media_timeout_s: float = 10.0
    max_calls: int = 0  # per process; 0: no limit
    local_bargein: bool = True
    send_silence: bool = True
    context_compression: bool = True
    resend_buffer_s: float = 15.0
    max_reconnects: int = 4
    tool_timeout_s: float = 10.0
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    # None: every address aioice finds plus 127.0.0.1 (aioice leaves loopback out by itself).
    ice_host_addresses: list[str] | None = None
    web_root: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        s = cls()
        s.host = os.environ.get("PARLEY_HOST", s.host)
        s.port = int(_env_float("PARLEY_PORT", s.port))
        s.backend = os.environ.get("PARLEY_BACKEND", s.backend)
        s.model = os.environ.get("PARLEY_MODEL", s.model)
        s.voice = os.environ.get("PARLEY_VOICE", s.voice)
        s.system_instruction = os.environ.get("PARLEY_SYSTEM_INSTRUCTION", s.system_instruction)
        s.gemini_api_version = os.environ.get("PARLEY_GEMINI_API_VERSION", s.gemini_api_version)
        s.gemini_ping_timeout_s = _env_float("PARLEY_GEMINI_PING_TIMEOUT", s.gemini_ping_timeout_s)
        s.uplink_chunk_ms = int(_env_float("PARLEY_UPLINK_CHUNK_MS", s.uplink_chunk_ms))
        s.no_media_timeout_s = _env_float("PARLEY_NO_MEDIA_TIMEOUT", s.no_media_timeout_s)
        s.max_calls = int(_env_float("PARLEY_MAX_CALLS", s.max_calls))
        s.local_bargein = _env_bool("PARLEY_LOCAL_BARGEIN", s.local_bargein)
        s.send_silence = _env_bool("PARLEY_SEND_SILENCE", s.send_silence)
        s.context_compression = _env_bool("PARLEY_CONTEXT_COMPRESSION", s.context_compression)
        s.resend_buffer_s = _env_float("PARLEY_RESEND_BUFFER_S", s.resend_buffer_s)
        s.max_reconnects = int(_env_float("PARLEY_MAX_RECONNECTS", s.max_reconnects))
        s.tool_timeout_s = _env_float("PARLEY_TOOL_TIMEOUT", s.tool_timeout_s)
        s.ice_servers = parse_ice_servers(os.environ.get("PARLEY_ICE_SERVERS", ""))
        s.ice_host_addresses = _env_list("PARLEY_ICE_HOST_ADDRESSES")
        s.web_root = os.environ.get("PARLEY_WEB_ROOT") or None
        return s

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "gemini" if gemini_configured() else "emulator"
        if self.backend not in ("gemini", "emulator"):
            raise SystemExit(f"unknown backend {self.backend!r}: use auto, gemini or emulator")
        return self.backend
