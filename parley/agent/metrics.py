"""Prometheus metrics for one agent process, from timestamps the calls take anyway.

`Metrics` owns its own `CollectorRegistry` (never the global one, so several servers can live in one
process, as in the tests) and is served as text by `GET /metrics`. It is the calls' `CallObserver`:
each call reports its latencies as it measures them, and its counters are read at scrape time.

Histograms (seconds):
  parley_uplink_latency_seconds     RTP packet arrival -> its PCM written to the Gemini socket
  parley_downlink_latency_seconds   Gemini audio arrival -> its first sample handed to the encoder, less
                                    the audio queued ahead of it (what an ideal player would also wait)
  parley_bargein_stop_seconds       `interrupted` or the local VAD's decision -> the first frame the
                                    outgoing track emits after the cut
  parley_response_seconds           end of the user's speech -> the first audio of the agent's answer
  parley_first_audio_seconds        offer received -> the first outgoing audio frame
  parley_event_loop_lag_seconds     how late a 50 ms timer fires (a sampler task)
  parley_gc_pause_seconds           each garbage collection, by generation: the loop stops for it, and a
                                    profile cannot see it (it runs inside whatever allocation set it off)
Counters and gauges: active calls, calls started, calls ended by reason, uplink frames by outcome
(decoded, late, concealed, recovered, decode_error), downlink frames (audio, silent), Gemini
connections, reconnects and tokens, seconds of audio sent to Gemini.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from parley.agent.observer import CallObserver, CallView, Measure

# Media-path latencies: fine steps around the 20-40 ms that matter.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.0225, 0.025,
    0.03, 0.035, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
)  # fmt: skip
RESPONSE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
SETUP_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
LOOP_LAG_INTERVAL_S = 0.05


class Metrics(CallObserver):
    """Every metric of one agent process, in its own registry; calls report to it as their observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uplink_latency = Histogram(
            "parley_uplink_latency_seconds",
            "RTP packet arrival to its PCM on the Gemini socket",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.downlink_latency = Histogram(
            "parley_downlink_latency_seconds",
            "Gemini audio arrival to its first sample handed to the encoder, beyond the audio queued ahead",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bargein_stop = Histogram(
            "parley_bargein_stop_seconds",
            "interrupted (or the local VAD) to the first outgoing frame after the cut",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.response = Histogram(
            "parley_response_seconds",
            "end of the user's speech to the first audio of the agent's answer",
            buckets=RESPONSE_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "parley_first_audio_seconds",
            "offer received to the first outgoing audio frame",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "parley_event_loop_lag_seconds",
            f"how late a {LOOP_LAG_INTERVAL_S * 1000:.0f} ms timer on the event loop fires",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "parley_gc_pause_seconds",
            "how long each garbage collection stopped the process, by generation",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._gc_started = 0.0
        self._histograms = {
            Measure.UPLINK: self.uplink_latency,
            Measure.DOWNLINK: self.downlink_latency,
            Measure.BARGEIN_STOP: self.bargein_stop,
            Measure.RESPONSE: self.response,
            Measure.FIRST_AUDIO: self.first_audio,
        }
        self.calls_started = Counter("parley_calls_started", "calls created (offers taken)", registry=r)
        self.calls_ended = Counter("parley_calls_ended", "calls ended, by reason", ["reason"], registry=r)
        self.active_calls = Gauge("parley_active_calls", "calls in progress", registry=r)
        self._totals = _CallTotals()
        r.register(self._totals)
        self._sampler: asyncio.Task[None] | None = None

    # --- the process --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the event-loop lag sampler (call from the running loop) and the collections' timer."""
        if self._sampler is None:
            self._sampler = asyncio.create_task(
                sample_loop_lag(self.loop_lag.observe), name="metrics-loop-lag"
            )
            gc.callbacks.append(self._time_collection)

    def _time_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._gc_started
            self.gc_pause.labels(generation=str(info["generation"])).observe(pause)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._time_collection)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (format 0.0.4: every scraper reads it)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    # --- calls: the CallObserver door ---------------------------------------------------------

    def call_started(self, call: CallView) -> None:
        self.calls_started.inc()
        self.active_calls.inc()
        self._totals.live[call.id] = call

    def latency(self, call: CallView, measure: Measure, seconds: float) -> None:
        self._histograms[measure].observe(seconds)

    def call_ended(self, call: CallView) -> None:
        if call.id not in self._totals.live:
            return
        self._totals.retire(call)
        self.active_calls.dec()
        self.calls_ended.labels(reason=call.end_reason or "unknown").inc()


class _CallTotals(Collector):
    """Counters summed over the live calls plus everything the ended ones counted."""

    def __init__(self) -> None:
        self.live: dict[str, CallView] = {}
        self.ended: dict[str, float] = {}

    def retire(self, call: CallView) -> None:
        self.live.pop(call.id, None)
        for key, value in call.counters().items():
            self.ended[key] = self.ended.get(key, 0.0) + value

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        totals = dict(self.ended)
        for call in list(self.live.values()):
            for key, value in call.counters().items():
                totals[key] = totals.get(key, 0.0) + value
        return list(self._families(totals))

    @staticmethod
    def _families(t: dict[str, float]) -> Iterator[Metric]:
        def get(key: str) -> float:
            return t.get(key, 0.0)

        frames = CounterMetricFamily(
            "parley_uplink_frames", "caller audio frames by outcome", labels=["outcome"]
        )
        for outcome in ("decoded", "late", "concealed", "recovered", "decode_error"):
            frames.add_metric([outcome], get(outcome))
        yield frames
        down = CounterMetricFamily("parley_downlink_frames", "frames sent to callers", labels=["kind"])
        down.add_metric(["audio"], get("audio_frames"))
        down.add_metric(["silent"], get("silent_frames"))
        yield down
        yield CounterMetricFamily("parley_gemini_connections", "Live connections opened", get("connections"))
        yield CounterMetricFamily(
            "parley_gemini_reconnects", "Live connections opened to go on a conversation", get("reconnects")
        )
        tokens = CounterMetricFamily("parley_gemini_tokens", "tokens Gemini reported", labels=["kind"])
        for kind in ("prompt", "response", "total"):
            tokens.add_metric([kind], get(kind))
        yield tokens
        yield CounterMetricFamily(
            "parley_gemini_audio_sent_seconds", "caller audio sent to Gemini", get("audio_s")
        )
        yield CounterMetricFamily(
            "parley_video_frames", "video frames (JPEG) sent to Gemini", get("video_frames")
        )
        yield CounterMetricFamily(
            "parley_video_seconds", "call time with fresh video going to Gemini", get("video_s")
        )
        yield CounterMetricFamily(
            "parley_video_input_tokens",
            "input tokens the video frames sent cost (frames x tokens per frame at the media resolution)",
            get("video_tokens"),
        )
        yield CounterMetricFamily("parley_video_jpeg_bytes", "JPEG bytes sent to Gemini", get("video_bytes"))
        yield CounterMetricFamily(
            "parley_video_frames_dropped",
            "caller video frames not decoded (budget, gaps, busy)",
            get("video_dropped"),
        )


async def sample_loop_lag(observe: Callable[[float], None], interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe how late a timer fires, forever: the event loop's scheduling delay."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - due))


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """A quantile from cumulative (upper bound, count) pairs, interpolated as Prometheus does."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def parse_histograms(text: str, leave_out: str | None = None) -> dict[str, Any]:
    """Histogram buckets, sums and counts (and plain samples) from Prometheus text, for tests and bench.
    Several processes' samples (`parley serve --processes`) are summed, histograms bucket by bucket; samples
    whose `process` label is `leave_out` are left out (the front door's, to judge the calls' loops)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        samples = [s for s in family.samples if leave_out is None or s.labels.get("process") != leave_out]
        if family.type == "histogram":
            buckets: dict[float, float] = {}
            for s in samples:
                if s.name.endswith("_bucket"):
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
            total = sum(s.value for s in samples if s.name.endswith("_sum"))
            count = sum(s.value for s in samples if s.name.endswith("_count"))
            out[family.name] = {"buckets": sorted(buckets.items()), "sum": total, "count": count}
        else:
            for s in samples:
                labels = sorted((k, v) for k, v in s.labels.items() if k != "process")
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in labels)
                out[key] = out.get(key, 0.0) + s.value
    return out
