"""How long the garbage collector stops the event loop, with the start-up heap frozen (as `parley serve`
does) and without (the probe makes `freeze_heap` do nothing), under the same load, interleaved.

    python -m bench.gc_pauses [--calls 10,40] [--rounds 2] [--seconds 30]

The server is `parley serve --backend gemini` against `parley emulator` in a process of its own (on the
load generator's core), run through this module so that `gc.callbacks` can time every collection in the
server's process. Reported per generation: collections, the longest, their sum, from the load
generator's start to its end (set-ups, the measured window and hang-ups).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.loop_ab import external_emulator
from bench.run import PY, ROOT, SERVER_CPU, Server, loadgen, log, pin

PORT = 18651


def probe(out: Path, unfreeze: bool, argv: list[str]) -> None:
    """In the server's process: time each collection; every half second, write to `out` the count and
    sum per generation and each collection over 1 ms with its wall-clock time."""
    counts, totals = [0, 0, 0], [0.0, 0.0, 0.0]
    long: list[tuple[int, float, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        generation, took = int(info["generation"]), time.perf_counter() - started[0]
        counts[generation] += 1
        totals[generation] += took
        if took > 0.001 and len(long) < 100000:
            long.append((generation, time.time(), took))

    def report() -> None:
        while True:
            time.sleep(0.5)
            out.write_text(json.dumps({"counts": counts, "totals": totals, "long": long}))

    gc.callbacks.append(timed)
    threading.Thread(target=report, daemon=True).start()
    if unfreeze:
        import parley.processes

        parley.processes.freeze_heap = lambda: None  # the process as it was before it froze its heap
    from parley.cli import main

    sys.argv = ["parley", *argv]
    main()


def window(before: dict[str, Any], after: dict[str, Any], since: float) -> dict[str, Any]:
    """Per generation, over the load generator's run: collections, the longest, their sum (ms)."""
    return {
        str(g): {
            "count": after["counts"][g] - before["counts"][g],
            "max_ms": round(
                max((ms for gen, at, ms in after["long"] if gen == g and at >= since), default=0) * 1000, 2
            ),
            "total_ms": round((after["totals"][g] - before["totals"][g]) * 1000, 1),
        }
        for g in (0, 1, 2)
    }


def measure(calls: list[int], rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        emulator, gemini_env = external_emulator(Path(workdir) / "certs")
        try:
            for n in calls:
                for r in range(rounds):
                    for heap in ("frozen", "unfrozen"):
                        log(f"gc pauses: {n} calls, heap {heap}, round {r + 1}")
                        row = one_run(Path(workdir), gemini_env, n, seconds, heap == "unfrozen")
                        rows.append({"calls": n, "heap": heap, "round": r + 1, **row})
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            emulator.terminate()
            emulator.wait(10)
    return rows


def one_run(
    workdir: Path, gemini_env: dict[str, str], calls: int, seconds: float, unfreeze: bool
) -> dict[str, Any]:
    out = workdir / "pauses.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_API_KEY"}
    env.update(gemini_env)
    env.update(
        PARLEY_ICE_HOST_ADDRESSES="127.0.0.1",
        PARLEY_RATE_LIMIT="0",
        PARLEY_DATABASE_URL="none",
        PARLEY_NO_MEDIA_TIMEOUT="30",
    )
    argv = ["--log-level", "WARNING", "serve", "--backend", "gemini", "--port", str(PORT)]
    command = [PY, "-m", "bench.gc_pauses", "--probe", str(out), *(["--unfreeze"] if unfreeze else []), "--"]
    process = subprocess.Popen(
        [*command, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin(SERVER_CPU),
    )
    server = Server(f"gc-{'unfrozen' if unfreeze else 'frozen'}", PORT, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.get("/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the probed server did not start") from None
                time.sleep(0.2)
        time.sleep(1)
        before, since = json.loads(out.read_text()), time.time()
        result, numbers = loadgen(server, ["--calls", str(calls), "--seconds", str(seconds)])
        time.sleep(1)
        after = json.loads(out.read_text())
    finally:
        server.stop()
    return {
        "gc": window(before, after, since),
        "loop_lag_ms": numbers.get("loop_lag"),
        "cpu_ms_per_call_s": numbers.get("cpu_ms_per_call_s"),
        "frames_per_s": result.get("frames_per_s"),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        rest = sys.argv[3:]
        unfreeze = bool(rest) and rest[0] == "--unfreeze"
        argv = rest[rest.index("--") + 1 :]
        probe(Path(sys.argv[2]), unfreeze, argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", default="10,40")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    rows = measure([int(n) for n in args.calls.split(",")], args.rounds, args.seconds)
    out = ROOT / "bench" / "out" / "gc-pauses.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    for row in rows:
        full = row["gc"]["2"]
        print(
            f"{row['calls']:>3} calls {row['heap']:>8} round {row['round']}: full collections "
            f"{full['count']}, longest {full['max_ms']} ms, sum {full['total_ms']} ms; "
            f"gen1 longest {row['gc']['1']['max_ms']} ms; loop lag {row['loop_lag_ms']}; "
            f"load {row['load_average']}"
        )


if __name__ == "__main__":
    main()
