"""What call records, webhooks and traces cost the media path: the same load with all three off and on.

    python -m bench.records_cost [--calls 10,40] [--rounds 2] [--seconds 17] [--backend loopback]

"on" is SQLite (a file under bench/out), PARLEY_WEBHOOK_URL and OTEL_EXPORTER_OTLP_ENDPOINT both at
bench/sink.py (pinned with the load generator); "off" is PARLEY_DATABASE_URL=none and neither variable.
The two servers are measured interleaved, step by step, so a busy moment of the machine hits both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.run import LOAD_CPU, PY, ROOT, log, measured_load, pin, start_server

SINK_PORT = 18401


def start_sink() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([PY, "-m", "bench.sink", str(SINK_PORT)], cwd=ROOT, preexec_fn=pin(LOAD_CPU))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{SINK_PORT}/", b"", method="POST")
            urllib.request.urlopen(request)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the sink did not start")


def records_cost(
    calls: list[int], rounds: int, seconds: float, backend: str, out: Path
) -> list[dict[str, Any]]:
    database = out / "records-bench.db"
    database.unlink(missing_ok=True)
    on = {
        "PARLEY_DATABASE_URL": f"sqlite:///{database}",
        "PARLEY_WEBHOOK_URL": f"http://127.0.0.1:{SINK_PORT}/hook",
        "PARLEY_WEBHOOK_SECRET": "bench",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{SINK_PORT}",
    }
    sink = start_sink()
    servers = {
        "off": start_server(backend, 18411, {"PARLEY_DATABASE_URL": "none"}),
        "on": start_server(backend, 18421, on),
    }
    rows: list[dict[str, Any]] = []
    try:
        for n in calls:
            for r in range(rounds):
                for name, server in servers.items():
                    log(f"records {name}: {n} calls, round {r + 1}")
                    time.sleep(2)
                    try:
                        load = ["--calls", str(n), "--seconds", str(seconds)]
                        result, numbers = measured_load(server, load)
                    except OSError as exc:  # past real time a saturated server may not answer /metrics
                        log(f"  failed: {type(exc).__name__}: {exc}")
                        continue
                    rows.append({"records": name, "calls": n, "round": r, **numbers, "load": result})
                    (out / "records-partial.json").write_text(json.dumps(rows, indent=2))
    finally:
        for server in servers.values():
            server.stop()
        sink.terminate()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load and setting: the median over rounds of CPU per call-second and the latencies."""
    table = []
    for n in sorted({r["calls"] for r in rows}):
        for name in ("off", "on"):
            picked = [r for r in rows if r["calls"] == n and r["records"] == name]

            def median(get: Any, picked: list[dict[str, Any]] = picked) -> float | None:
                values = sorted(v for v in (get(r) for r in picked) if v is not None)
                return values[len(values) // 2] if values else None

            table.append(
                {
                    "calls": n,
                    "records": name,
                    "cpu_ms_per_call_s": median(lambda r: r.get("cpu_ms_per_call_s")),
                    "uplink_p50_ms": median(lambda r: (r.get("uplink") or {}).get("p50")),
                    "uplink_p95_ms": median(lambda r: (r.get("uplink") or {}).get("p95")),
                    "downlink_p50_ms": median(lambda r: (r.get("downlink") or {}).get("p50")),
                    "downlink_p95_ms": median(lambda r: (r.get("downlink") or {}).get("p95")),
                    "rtt_p50_ms": median(lambda r: (r["load"].get("rtt_ms") or {}).get("p50")),
                    "rtt_p95_ms": median(lambda r: (r["load"].get("rtt_ms") or {}).get("p95")),
                    "real_time": all(r["load"].get("frames_per_s", {}).get("min", 0) >= 49 for r in picked),
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,40")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=17.0)
    parser.add_argument("--backend", default="loopback")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = records_cost([int(n) for n in args.calls.split(",")], args.rounds, args.seconds, args.backend, out)
    table = summarise(rows)
    (out / f"records-{args.backend}.json").write_text(json.dumps({"rows": rows, "table": table}, indent=2))
    for row in table:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
