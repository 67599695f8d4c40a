"""`make soak`: hundreds of short calls against one in-process `parley serve`, then nothing must be left.

    python -m bench.soak [--minutes 3] [--concurrency 4] [--json out.json]

Calls run `--concurrency` at a time, each a headless caller (parley.caller) saying a few words to the
bundled Gemini Live emulator, which is told to misbehave in turns: goAway and short connection lifetimes,
drops mid-reply (1011), aborted TLS streams (1006). Callers end their calls in different ways: hang up
(DELETE), hang up mid-reply, talk twice, or just close their peer connection without a word.

After a warm-up, and then at checkpoints where every call has ended, the process's RSS, threads, asyncio
tasks and open file descriptors are sampled; at the end they must be back near the warm-up level, no call
may be left open (`worker.calls`), every call's end must be counted (`worker.calls_ended`) with a reason
the caller caused, and nearly all calls must have been answered. A JSON summary is printed either way;
the exit status is 1 when a check fails, with a plain report of which and why on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from parley.agent.ice import offer_host_addresses
from parley.caller import RATE, Caller, load_wav
from parley.emulator.server import EmulatorOptions, GeminiEmulator
from parley.server import Running, start
from parley.settings import Settings

SPEECH = load_wav(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests/data/speech.wav")
)
SHORT = SPEECH[: RATE * 9 // 10]  # "Hello Parley."

# How each call ends, in rotation: mostly a normal conversation.
KINDS = ["talk", "talk", "talk", "twice", "talk", "cut_reply", "talk", "leave", "twice", "talk"]
# What the emulator does to the Gemini connections, in rotation between checkpoints.
FAULTS: dict[str, dict[str, Any]] = {
    "goaway": {"lifetime_s": 2.5, "goaway_lead_s": 1.2},  # goAway 1.3 s in, closed at 2.5 s
    "drop_mid_reply": {"drop_after_turns": 1, "drop_code": 1011},  # the second reply dies half-way
    "abort": {"drop_after_s": 1.5, "drop_code": None},  # TCP/TLS aborted, no close frame (1006)
    "clean": {},
}
REASONS_CALLERS_CAUSE = {"hangup", "peer_closed"}

# Tolerances against the warm-up level.
RSS_SLACK_MB = 10.0
RSS_SLOPE_MB_PER_100_CALLS = 3.0
THREADS_SLACK = 2
TASKS_SLACK = 2
FDS_SLACK = 6
MIN_ANSWERED = 0.9


@dataclass
class CallResult:
    index: int
    kind: str
    fault: str
    answered: bool = False
    error: str | None = None


@dataclass
class Sample:
    calls: int
    t: float
    rss_mb: float
    threads: int
    tasks: int
    fds: int


@dataclass
class Soak:
    running: Running
    emulator: GeminiEmulator
    url: str
    results: list[CallResult] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    async def one_call(self, index: int, fault: str) -> None:
        kind = KINDS[index % len(KINDS)]
        result = CallResult(index, kind, fault)
        self.results.append(result)
        caller = Caller(self.url, seed=index)
        try:
            await caller.connect(timeout_s=10)
            caller.say(SHORT)
            if kind == "cut_reply":  # hang up while the agent is talking
                await caller.wait_for_event("agent_turn_start", timeout_s=8)
                result.answered = True
                await asyncio.sleep(0.2)
            else:
                await caller.wait_for_event("agent_turn_end", timeout_s=8)
                result.answered = True
            if kind == "twice":
                ends = len(caller.events)
                caller.say(SHORT)
                await caller.wait_for_event("agent_turn_start", timeout_s=8, after=ends)
                await asyncio.sleep(0.6)  # into the reply: where drop_mid_reply cuts it
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            if kind == "leave":
                caller.call_url = None  # no DELETE: the peer connection just closes
            with contextlib.suppress(Exception):
                await caller.hang_up()

    async def quiesce(self, timeout_s: float = 15.0) -> None:
        """Until every call has ended and every Gemini socket is closed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running.worker.calls and self.emulator.open_connections() == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # let closed transports run their last callbacks
        # The emulator is test bookkeeping in this process: its per-connection records are not Parley's.
        self.emulator.connections.clear()

    def sample(self) -> Sample:
        gc.collect()
        release_free_memory()
        status = _proc_status()
        sample = Sample(
            calls=len(self.results),
            t=round(time.monotonic() - self.started, 1),
            rss_mb=round(status["VmRSS"] / 1024, 1),
            threads=status["Threads"],
            tasks=len(asyncio.all_tasks()),
            fds=len(os.listdir("/proc/self/fd")),
        )
        self.samples.append(sample)
        return sample

    async def run_segment(self, until: float, fault: str, concurrency: int) -> None:
        """Calls, `concurrency` at a time, started until `until`; then wait for all to end."""
        self.emulator.options.update({**DEFAULT_FAULTS, **FAULTS[fault]})
        active: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            while len(active) < concurrency and time.monotonic() < until:
                task = asyncio.create_task(self.one_call(len(self.results), fault))
                active.add(task)
                await asyncio.sleep(0.15)  # stagger the starts
            _, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
        if active:
            await asyncio.wait(active)
        await self.quiesce()


DEFAULT_FAULTS = {
    name: getattr(EmulatorOptions(), name)
    for name in {option for fault in FAULTS.values() for option in fault}
}


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc), so RSS shows memory in use, not the allocator's
    free lists: many threads' arenas otherwise keep what a burst of calls used."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def slope_per_100_calls(samples: list[Sample]) -> float:
    """Least-squares RSS growth, MB per 100 calls, over the samples after the warm-up."""
    if len(samples) < 3:
        return 0.0
    xs = [s.calls for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def checks(soak: Soak, baseline: Sample, final: Sample) -> dict[str, dict[str, Any]]:
    worker = soak.running.worker
    ended = dict(worker.calls_ended)
    after_warmup = [s for s in soak.samples if s.calls >= baseline.calls]
    answered = sum(r.answered for r in soak.results)
    unexpected = {k: v for k, v in ended.items() if k not in REASONS_CALLERS_CAUSE}
    slope = slope_per_100_calls(after_warmup)

    def check(ok: bool, detail: str) -> dict[str, Any]:
        return {"ok": ok, "detail": detail}

    return {
        "no_calls_left": check(not worker.calls, f"{len(worker.calls)} calls still open"),
        "every_end_counted": check(
            sum(ended.values()) == worker.calls_started,
            f"{sum(ended.values())} ends counted for {worker.calls_started} calls started ({ended})",
        ),
        "every_call_started": check(
            worker.calls_started == len(soak.results),
            f"{worker.calls_started} calls started on the server for {len(soak.results)} callers",
        ),
        "end_reasons": check(not unexpected, f"ends the callers did not cause: {unexpected or 'none'}"),
        "answered": check(
            answered >= MIN_ANSWERED * len(soak.results),
            f"{answered} of {len(soak.results)} calls answered (need {MIN_ANSWERED:.0%})",
        ),
        "rss_flat": check(
            final.rss_mb - baseline.rss_mb <= RSS_SLACK_MB and slope <= RSS_SLOPE_MB_PER_100_CALLS,
            f"RSS {baseline.rss_mb} -> {final.rss_mb} MB (slack {RSS_SLACK_MB}), "
            f"trend {slope:.2f} MB per 100 calls (max {RSS_SLOPE_MB_PER_100_CALLS})",
        ),
        "threads_flat": check(
            final.threads <= baseline.threads + THREADS_SLACK,
            f"threads {baseline.threads} -> {final.threads} (slack {THREADS_SLACK})",
        ),
        "tasks_flat": check(
            final.tasks <= baseline.tasks + TASKS_SLACK,
            f"asyncio tasks {baseline.tasks} -> {final.tasks} (slack {TASKS_SLACK})",
        ),
        "fds_flat": check(
            final.fds <= baseline.fds + FDS_SLACK,
            f"open fds {baseline.fds} -> {final.fds} (slack {FDS_SLACK})",
        ),
    }


def settings() -> Settings:
    s = Settings(host="127.0.0.1", port=0, backend="emulator", ice_host_addresses=["127.0.0.1"])
    s.no_media_timeout_s = 3.0
    s.rejoin_grace_s = 2.0  # a connection that fails is not kept waiting for 20 s
    s.rate_limit = "0"  # hundreds of calls from one address are the point here (PARLEY_RATE_LIMIT)
    return s


async def soak(minutes: float, concurrency: int, warmup_s: float, segment_s: float) -> dict[str, Any]:
    offer_host_addresses(["127.0.0.1"])
    emulator = GeminiEmulator(options=EmulatorOptions(handle_ttl_s=30.0))  # handles expire, not pile up
    await emulator.start()
    running = await start(settings(), emulator=emulator)
    assert running.session_config is not None
    running.session_config.goaway_margin_s = 0.5
    soak = Soak(running, emulator, f"http://127.0.0.1:{running.port}")
    end = soak.started + minutes * 60
    faults = list(FAULTS)
    try:
        segment = 0
        await soak.run_segment(min(end, soak.started + warmup_s), "goaway", concurrency)
        baseline = soak.sample()
        while time.monotonic() < end - 5:
            fault = faults[segment % len(faults)]
            segment += 1
            await soak.run_segment(min(end, time.monotonic() + segment_s), fault, concurrency)
            soak.sample()
        final = soak.sample()
        results = checks(soak, baseline, final)
    finally:
        await running.stop()
        await emulator.stop()
    errors: dict[str, int] = {}
    for r in soak.results:
        if r.error:
            errors[r.error.split(":")[0]] = errors.get(r.error.split(":")[0], 0) + 1
    return {
        "ok": all(c["ok"] for c in results.values()),
        "minutes": round((time.monotonic() - soak.started) / 60, 2),
        "calls": len(soak.results),
        "concurrency": concurrency,
        "calls_ended": dict(running.worker.calls_ended),
        "answered": sum(r.answered for r in soak.results),
        "caller_errors": errors,
        "by_fault": {
            f: {
                "calls": sum(r.fault == f for r in soak.results),
                "answered": sum(r.answered for r in soak.results if r.fault == f),
            }
            for f in ["goaway", *faults[1:]]
        },
        "baseline": dataclasses.asdict(baseline),
        "final": dataclasses.asdict(final),
        "samples": [dataclasses.asdict(s) for s in soak.samples],
        "checks": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to run (default 3)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls at a time (default 4)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="warm-up seconds (default: 40%% of the run, at least 60)"
    )
    parser.add_argument("--segment", type=float, default=20.0, help="seconds between checkpoints")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # RSS settles after ~100 calls (allocator arenas, caches, the thread pool): measured from there on
    warmup = args.warmup if args.warmup is not None else max(60.0, args.minutes * 60 * 0.4)
    summary = asyncio.run(soak(args.minutes, args.concurrency, warmup, args.segment))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if not summary["ok"]:
        print("\nSOAK FAILED:", file=sys.stderr)
        for name, c in summary["checks"].items():
            if not c["ok"]:
                print(f"  {name}: {c['detail']}", file=sys.stderr)
        return 1
    print(f"\nsoak ok: {summary['calls']} calls in {summary['minutes']} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
