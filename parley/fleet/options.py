"""What the fleet needs to know, built from the settings by the process that runs it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FleetOptions:
    redis_url: str
    redis_prefix: str = "parley"
    heartbeat_s: float = 0.5  # how often a worker reports its load
    worker_ttl_s: float = 2.0  # a worker silent this long is dead (a few missed heartbeats)
    dispatch_timeout_s: float = 10.0  # signaling waits this long for a worker's answer
    worker_max_lag_ms: float = 100.0  # above this event-loop lag a worker takes no new calls
    worker_max_cpu: float = 0.9  # ... or above this CPU (fraction of one core)
