"""What records, webhooks and traces add to each call, measured where it is spent, so that a busy
machine cannot hide it (bench/records_cost.py runs whole calls, which needs a quiet machine).

    python -m bench.records_overhead [--call-seconds 600]

1. On the media path: the observer calls one call-second makes (50 uplink and 50 downlink latencies,
   and the events of a turn every 5 s: speech start/end, turn start/end, 10 transcript pieces), through
   `Observers` with metrics only, and with metrics + the recorder + webhooks + the tracer. The difference
   per call-second is CPU on the event loop, and the largest single report is the most any one frame
   can be delayed.
2. Off the media path: the writer task applying a 60 s call's writes (its rows, 12 turns of utterances and
   timeline) to SQLite, as process CPU (the loop and aiosqlite's thread), per call-second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from parley.agent.metrics import Metrics
from parley.agent.observer import CallObserver, Measure, Observers
from parley.records.cost import DEFAULT_PRICES
from parley.records.recorder import CallRecorder
from parley.records.service import Records, RecordsOptions
from parley.records.store import Write
from parley.tracing.call_traces import CallTracer


class FakeCall:
    def __init__(self, n: int) -> None:
        self.id = f"call{n:06d}"
        self.end_reason = "hangup"
        self.caller = {"origin": "https://shop.example"}
        self.options = self  # what the call was made with: here, only its caller

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": 60.0,
            "turns": 12,
            "rejoins": 0,
            "latency_ms": {"uplink": {"p50": 1.0}},
            "gemini": {"connections": 1, "tokens": {"prompt": 5000, "response": 3000, "total": 8000}},
        }

    def counters(self) -> dict[str, float]:
        return {}


def call_second(observer: CallObserver, call: FakeCall, second: int, worst: list[float]) -> None:
    """One second of a call's reports; the slowest single report goes to `worst`."""
    for _ in range(50):
        t = time.perf_counter()
        observer.latency(call, Measure.UPLINK, 0.001)
        observer.latency(call, Measure.DOWNLINK, 0.02)
        worst.append(time.perf_counter() - t)
    if second % 5 == 0:
        events: list[tuple[str, dict[str, Any]]] = [("user_speech_start", {}), ("user_speech_end", {})]
        events += [("transcript", {"role": "user", "text": "some words ", "final": i == 4}) for i in range(5)]
        events += [("agent_turn_start", {"turn": second // 5, "response_ms": 600})]
        events += [("transcript", {"role": "agent", "text": "an answer ", "final": False}) for _ in range(5)]
        events += [("agent_turn_end", {"turn": second // 5, "interrupted": False, "cut": False})]
        for kind, fields in events:
            t = time.perf_counter()
            observer.call_event(call, kind, fields)
            worst.append(time.perf_counter() - t)


def observer_cost(make: Any, call_seconds: int) -> tuple[float, float]:
    """CPU µs per call-second (best of 5 runs) and the 99.9th percentile of a single report (µs; the
    maximum would measure the machine's other work, not this)."""
    runs, worst_all = [], []
    for run in range(5):
        observer = make()
        worst: list[float] = []
        started = time.process_time()
        for c in range(call_seconds // 60):
            call = FakeCall(run * 100000 + c)
            observer.call_started(call)
            observer.call_state(call, "active")
            for s in range(60):
                call_second(observer, call, s, worst)
            observer.call_ended(call)
        runs.append((time.process_time() - started) * 1e6 / call_seconds)
        worst.sort()
        worst_all.append(worst[int(len(worst) * 0.999)] * 1e6)
    return min(runs), statistics.median(worst_all)


def measure(call_seconds: int = 600) -> dict[str, Any]:
    writes: list[Write] = []
    webhooks: list[tuple[str, dict[str, Any]]] = []
    tracer = CallTracer(TracerProvider(), "bench")  # spans made, none exported: the loop's share

    def metrics_only() -> CallObserver:
        return Observers([Metrics()])

    def everything() -> CallObserver:
        writes.clear()
        webhooks.clear()

        def submit(write: Write) -> bool:
            writes.append(write)
            return True

        recorder = CallRecorder(
            submit,
            "bench",
            "m",
            DEFAULT_PRICES,
            announce=lambda kind, call: webhooks.append((kind, call)),
        )
        return Observers([Metrics(), recorder, tracer])

    off_us, off_worst = observer_cost(metrics_only, call_seconds)
    on_us, on_worst = observer_cost(everything, call_seconds)
    per_call = len(writes) / (call_seconds // 60)

    async def write_cost() -> float:
        with tempfile.TemporaryDirectory() as folder:
            records = Records(RecordsOptions(database_url=f"sqlite:///{folder}/bench.db"))
            await records.start()
            try:
                started = time.process_time()
                for write in writes:
                    records.writer.submit(write)
                assert await records.writer.flush(120)
                return (time.process_time() - started) * 1e6 / call_seconds
            finally:
                await records.stop()

    writer_us = asyncio.run(write_cost())
    result = {
        "observers_us_per_call_s": {
            "metrics_only": round(off_us, 1),
            "all_on": round(on_us, 1),
            "added": round(on_us - off_us, 1),
        },
        "report_p999_us": {"metrics_only": round(off_worst, 1), "all_on": round(on_worst, 1)},
        "writes_per_60s_call": per_call,
        "writer_us_per_call_s": round(writer_us, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--call-seconds", type=int, default=600)
    args = parser.parse_args()
    print(json.dumps(measure(args.call_seconds), indent=2))


if __name__ == "__main__":
    main()
