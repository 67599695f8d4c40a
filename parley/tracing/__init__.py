"""OpenTelemetry traces of calls: one trace per call, made by a `CallObserver` (call_traces.py).

Nothing here runs, and nothing is imported, unless the standard OTel exporter variables are set
(parley/server.py checks `traces_wanted()` first).
"""

from __future__ import annotations

import os


def traces_wanted() -> bool:
    """The standard variables ask for an exporter (and OTEL_SDK_DISABLED does not say no)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
