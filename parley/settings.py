"""Settings for every Parley process, read from the environment and overridden by command-line flags.

Secrets are not settings: the Gemini key stays in the environment where the google-genai SDK reads it
itself, so no Parley object ever holds it and no repr, log line or error message can show it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from parley.records.cost import DEFAULT_PRICES, parse_prices

GEMINI_ENV_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
DEFAULT_DATABASE_URL = "sqlite:///parley.db"


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


def _env_optional_bool(name: str) -> bool | None:
    return _env_bool(name, False) if os.environ.get(name, "").strip() else None


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
    # Which Live model rules to follow, "2.5" or "3.x"; None: by the model's name (docs/gemini-3x-rules.md).
    live_rules: str | None = None
    # Per-model knobs; None leaves them to the model. 3.x models refuse all three: the call fails at start.
    proactive_audio: bool | None = None
    thinking_budget: int | None = None
    affective_dialog: bool | None = None
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
    processes: int = 1  # `parley serve`'s media processes; 0: one per core (parley/fleet/local.py)
    local_bargein: bool = True
    downlink_dtx: bool = True
    send_silence: bool = True
    context_compression: bool = True
    resend_buffer_s: float = 15.0
    max_reconnects: int = 4
    tool_timeout_s: float = 10.0
    rejoin_grace_s: float = 20.0
    max_call_seconds: float = 3600.0
    rate_limit: str = "30/60"  # call set-ups per client: 30 per 60 s
    # Join tokens are required when this is set (repr=False: a secret never reaches a log line).
    join_secret: str | None = field(default=None, repr=False)
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    # None: every address aioice finds plus 127.0.0.1 (aioice leaves loopback out by itself).
    ice_host_addresses: list[str] | None = None
    # Other sites that may use this server from a browser (the widget): "https://example.com", ...;
    # empty: this server's own origin only.
    allowed_origins: list[str] = field(default_factory=list)
    web_root: str | None = None
    # Agent profiles (`--agents FILE`): a TOML file of `[agents.NAME]` tables; None: the one agent
    # `default`, made of the settings above. A worker started with --agents-only serves only those.
    agents_file: str | None = None
    agents_only: list[str] | None = None
    # Scale-out (`parley signaling` / `parley worker`): see parley/fleet/ and parley/processes.py.
    redis_url: str | None = None
    redis_prefix: str = "parley"
    heartbeat_s: float = 0.5  # how often a worker reports its load
    worker_ttl_s: float = 2.0  # a worker silent this long is dead (a few missed heartbeats)
    dispatch_timeout_s: float = 10.0  # signaling waits this long for a worker's answer
    drain_timeout_s: float = 300.0  # SIGTERM: how long a worker lets its calls finish
    worker_max_lag_ms: float = 100.0  # above this event-loop lag a worker takes no new calls
    worker_max_cpu: float = 0.9  # ... or above this CPU (fraction of one core)
    worker_id: str | None = None
    worker_health_host: str = "127.0.0.1"
    worker_health_port: int = 0  # 0: no health endpoint
    # TURN with coturn's shared-secret scheme: credentials are minted per page and per call.
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: float = 4 * 3600.0
    # Video (camera or screen share): JPEG stills to Gemini, fewer when nobody speaks.
    video_fps: float = 1.0
    video_idle_fps: float = 0.5
    video_max_side: int = 768
    video_media_resolution: str | None = None  # LOW, MEDIUM, HIGH; None: the service's default
    # Call records (parley/records/): None keeps none. From the environment the default is a file in the
    # working directory (DEFAULT_DATABASE_URL), "none" keeps none.
    database_url: str | None = None
    admin_token: str | None = field(default=None, repr=False)  # reading records; None: loopback only
    retention_days: float = 0.0  # 0: records are kept until deleted by hand
    record_client_address: bool = False
    record_audio: bool = False
    recordings_dir: str = "recordings"
    records_queue: int = 10000  # record writes waiting for the database, at most
    prices: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    webhook_url: str | None = None  # call.started / call.ended POSTed here
    webhook_secret: str | None = field(default=None, repr=False)  # signs them (Parley-Signature)

    @classmethod
    def from_env(cls) -> Settings:
        s = cls()
        s.host = os.environ.get("PARLEY_HOST", s.host)
        s.port = int(_env_float("PARLEY_PORT", s.port))
        s.backend = os.environ.get("PARLEY_BACKEND", s.backend)
        s.model = os.environ.get("PARLEY_MODEL", s.model)
        s.live_rules = os.environ.get("PARLEY_LIVE_RULES", "").strip() or None
        if s.live_rules not in (None, "2.5", "3.x"):
            raise SystemExit(f"PARLEY_LIVE_RULES must be 2.5 or 3.x, got {s.live_rules!r}")
        s.proactive_audio = _env_optional_bool("PARLEY_PROACTIVE_AUDIO")
        budget = os.environ.get("PARLEY_THINKING_BUDGET", "").strip()
        s.thinking_budget = int(_env_float("PARLEY_THINKING_BUDGET", 0)) if budget else None
        s.affective_dialog = _env_optional_bool("PARLEY_AFFECTIVE_DIALOG")
        s.voice = os.environ.get("PARLEY_VOICE", s.voice)
        s.system_instruction = os.environ.get("PARLEY_SYSTEM_INSTRUCTION", s.system_instruction)
        s.gemini_api_version = os.environ.get("PARLEY_GEMINI_API_VERSION", s.gemini_api_version)
        s.gemini_ping_timeout_s = _env_float("PARLEY_GEMINI_PING_TIMEOUT", s.gemini_ping_timeout_s)
        s.uplink_chunk_ms = int(_env_float("PARLEY_UPLINK_CHUNK_MS", s.uplink_chunk_ms))
        s.no_media_timeout_s = _env_float("PARLEY_NO_MEDIA_TIMEOUT", s.no_media_timeout_s)
        s.max_calls = int(_env_float("PARLEY_MAX_CALLS", s.max_calls))
        s.processes = int(_env_float("PARLEY_PROCESSES", s.processes))
        s.local_bargein = _env_bool("PARLEY_LOCAL_BARGEIN", s.local_bargein)
        s.downlink_dtx = _env_bool("PARLEY_DOWNLINK_DTX", s.downlink_dtx)
        s.send_silence = _env_bool("PARLEY_SEND_SILENCE", s.send_silence)
        s.context_compression = _env_bool("PARLEY_CONTEXT_COMPRESSION", s.context_compression)
        s.resend_buffer_s = _env_float("PARLEY_RESEND_BUFFER_S", s.resend_buffer_s)
        s.max_reconnects = int(_env_float("PARLEY_MAX_RECONNECTS", s.max_reconnects))
        s.tool_timeout_s = _env_float("PARLEY_TOOL_TIMEOUT", s.tool_timeout_s)
        s.rejoin_grace_s = _env_float("PARLEY_REJOIN_GRACE", s.rejoin_grace_s)
        s.max_call_seconds = _env_float("PARLEY_MAX_CALL_SECONDS", s.max_call_seconds)
        s.rate_limit = os.environ.get("PARLEY_RATE_LIMIT", s.rate_limit)
        s.join_secret = os.environ.get("PARLEY_JOIN_SECRET") or None
        s.ice_servers = parse_ice_servers(os.environ.get("PARLEY_ICE_SERVERS", ""))
        s.ice_host_addresses = _env_list("PARLEY_ICE_HOST_ADDRESSES")
        s.web_root = os.environ.get("PARLEY_WEB_ROOT") or None
        s.agents_file = os.environ.get("PARLEY_AGENTS") or None
        s.allowed_origins = _env_list("PARLEY_ALLOWED_ORIGINS") or []
        s.redis_url = os.environ.get("PARLEY_REDIS_URL") or None
        s.redis_prefix = os.environ.get("PARLEY_REDIS_PREFIX") or s.redis_prefix
        s.heartbeat_s = _env_float("PARLEY_HEARTBEAT_INTERVAL", s.heartbeat_s)
        s.worker_ttl_s = _env_float("PARLEY_WORKER_TTL", s.worker_ttl_s)
        s.dispatch_timeout_s = _env_float("PARLEY_DISPATCH_TIMEOUT", s.dispatch_timeout_s)
        s.drain_timeout_s = _env_float("PARLEY_DRAIN_TIMEOUT", s.drain_timeout_s)
        s.worker_max_lag_ms = _env_float("PARLEY_WORKER_MAX_LAG_MS", s.worker_max_lag_ms)
        s.worker_max_cpu = _env_float("PARLEY_WORKER_MAX_CPU", s.worker_max_cpu)
        s.worker_id = os.environ.get("PARLEY_WORKER_ID") or None
        s.worker_health_host = os.environ.get("PARLEY_WORKER_HEALTH_HOST", s.worker_health_host)
        s.worker_health_port = int(_env_float("PARLEY_WORKER_HEALTH_PORT", s.worker_health_port))
        s.turn_urls = _env_list("PARLEY_TURN_URLS") or []
        s.turn_secret = os.environ.get("PARLEY_TURN_SECRET") or None
        s.turn_ttl_s = _env_float("PARLEY_TURN_TTL", s.turn_ttl_s)
        s.video_fps = _env_float("PARLEY_VIDEO_FPS", s.video_fps)
        s.video_idle_fps = _env_float("PARLEY_VIDEO_IDLE_FPS", s.video_idle_fps)
        s.video_max_side = int(_env_float("PARLEY_VIDEO_MAX_SIDE", s.video_max_side))
        resolution = os.environ.get("PARLEY_VIDEO_MEDIA_RESOLUTION", "").strip().upper() or None
        if resolution not in (None, "LOW", "MEDIUM", "HIGH"):
            raise SystemExit(f"PARLEY_VIDEO_MEDIA_RESOLUTION must be LOW, MEDIUM or HIGH, got {resolution!r}")
        s.video_media_resolution = resolution
        s.read_records_env()
        if not (0 < s.video_fps <= 30 and 0 < s.video_idle_fps and 16 <= s.video_max_side <= 4096):
            raise SystemExit("PARLEY_VIDEO_FPS/IDLE_FPS must be above 0 (FPS at most 30), MAX_SIDE 16..4096")
        return s

    def read_records_env(self) -> None:
        url = os.environ.get("PARLEY_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
        self.database_url = None if url.lower() in ("none", "off") else url
        self.admin_token = os.environ.get("PARLEY_ADMIN_TOKEN") or None
        self.retention_days = _env_float("PARLEY_RETENTION_DAYS", self.retention_days)
        self.record_client_address = _env_bool("PARLEY_RECORD_CLIENT_ADDRESS", self.record_client_address)
        self.record_audio = _env_bool("PARLEY_RECORD_AUDIO", self.record_audio)
        self.recordings_dir = os.environ.get("PARLEY_RECORDINGS_DIR") or self.recordings_dir
        self.records_queue = int(_env_float("PARLEY_RECORDS_QUEUE", self.records_queue))
        self.webhook_url = os.environ.get("PARLEY_WEBHOOK_URL") or None
        self.webhook_secret = os.environ.get("PARLEY_WEBHOOK_SECRET") or None
        if os.environ.get("PARLEY_PRICES"):
            try:
                self.prices = parse_prices(os.environ["PARLEY_PRICES"])
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
        if self.retention_days < 0 or self.records_queue < 1:
            raise SystemExit("PARLEY_RETENTION_DAYS must be 0 or more, PARLEY_RECORDS_QUEUE 1 or more")

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "gemini" if gemini_configured() else "emulator"
        if self.backend not in ("gemini", "emulator", "loopback"):
            raise SystemExit(f"unknown backend {self.backend!r}: use auto, gemini, emulator or loopback")
        return self.backend
