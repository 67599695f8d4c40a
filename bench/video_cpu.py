"""Where one video call's CPU goes: the camera's cost at 1 call, by thread, A/B interleaved.

    python -m bench.video_cpu [--rounds 6] [--seconds 20] [--against DIR] [--variant NAME=VALUE ...]

One `parley serve --backend loopback` (pinned to CPU 0, the load generator to CPU 1, as in bench/run.py)
per configuration: this checkout, another checkout's code (`--against /work/main`: before and after a
change) and this checkout with an environment variable set (`--variant`), all started at once. Each
round runs one audio-only call and one audio+camera call against every server, in turns, and reads the
server's CPU time from /proc over the load generator's measured window: the whole process, the
event-loop thread, and every other thread (the call's video worker, aiortc's threads). The camera's
cost is the difference between the two calls of a round, so the machine's other load, which drifts
between rounds, cancels as far as it can. Medians over the rounds; every round's numbers in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.run import ROOT, Server, loadgen, start_server


def thread_cpu(server: Server) -> dict[int, float]:
    """CPU seconds of each of the server's threads, by thread id: the scheduler's nanoseconds
    (schedstat), as /proc's clock ticks (10 ms) are too coarse for a few ms per second."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def one_call(server: Server, video: bool, seconds: float) -> dict[str, float]:
    """One call's server CPU (ms per call-second): total, the event loop's thread, the other threads."""
    args = ["--calls", "1", "--seconds", str(seconds), "--warmup", "3"]
    # bench.run.loadgen reads the process's CPU at the window's two edges: read the threads' there too.
    snapshots: list[tuple[float, dict[int, float]]] = []
    process_cpu = server.cpu_s

    def cpu_s() -> float:
        snapshots.append((time.monotonic(), thread_cpu(server)))
        return process_cpu()

    server.cpu_s = cpu_s  # type: ignore[method-assign]
    try:
        result, numbers = loadgen(server, [*args, "--video"] if video else args)
    finally:
        server.cpu_s = process_cpu  # type: ignore[method-assign]
    (t0, before), (t1, after) = snapshots[0], snapshots[-1]
    loop = server.process.pid  # the main thread's id is the process's
    spent = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
    per_call_s = 1000 / (t1 - t0)
    return {
        "total": round(sum(spent.values()) * per_call_s, 2),
        "loop": round(spent.get(loop, 0.0) * per_call_s, 2),
        "threads": round(sum(cpu for tid, cpu in spent.items() if tid != loop) * per_call_s, 2),
        "jpegs_per_s": numbers.get("video_frames_per_call_s", 0.0),
        "loadgen_lag_p99": result.get("loadgen_loop_lag_ms", {}).get("p99", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--against", default=None, help="another checkout: a server running its code")
    parser.add_argument("--variant", action="append", default=[], help="NAME=VALUE: a server with this env")
    parser.add_argument("--out", default="bench/out/video-cpu.json")
    args = parser.parse_args()
    configs: dict[str, tuple[dict[str, str], Path]] = {"this": ({}, ROOT)}
    if args.against:
        configs[args.against] = ({}, Path(args.against).resolve())
    for variant in args.variant:
        name, _, value = variant.partition("=")
        configs[variant] = ({name: value}, ROOT)
    servers = {
        label: start_server("loopback", 18300 + i, env, root)
        for i, (label, (env, root)) in enumerate(configs.items())
    }
    rows: list[dict[str, Any]] = []
    started = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()}
    try:
        for round_ in range(args.rounds):
            for label, server in servers.items():
                for video in (False, True) if round_ % 2 == 0 else (True, False):
                    row = {
                        "config": label,
                        "video": video,
                        "round": round_,
                        **one_call(server, video, args.seconds),
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = {}
    for label in configs:
        added: dict[str, list[float]] = {"total": [], "loop": [], "threads": []}
        for round_ in range(args.rounds):
            pair = {r["video"]: r for r in rows if r["config"] == label and r["round"] == round_}
            for key in added:
                added[key].append(pair[True][key] - pair[False][key])
        summary[label] = {
            **{f"added_{k}_ms": round(median(v), 2) for k, v in added.items()},
            **{f"added_{k}_each": [round(x, 1) for x in v] for k, v in added.items()},
            "audio_total_ms": round(
                median(r["total"] for r in rows if r["config"] == label and not r["video"]), 2
            ),
        }
    out = {
        **started,
        "load_after": os.getloadavg(),
        "seconds": args.seconds,
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({"load": [started["load_before"], out["load_after"]], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
