"""Two (or more) revisions of Parley under the same load, interleaved: CPU per call-second and loop lag.

    python -m bench.loop_ab main HEAD [--calls 40] [--rounds 3] [--backend emulator|gemini]

Each revision is extracted with `git archive` into a temporary directory and its `parley serve` runs from
there (pinned to CPU 0, like every server in bench/run.py); the load generator is this tree's. Per round
and revision, two steps: `steady` (the calls connect, settle, then a 15 s window) and `ramp` (one call
starts every 0.1 s inside a 20 s window: the `stalls` part's load). The machine is shared, so rounds
alternate the revisions and every row says what the load generator managed (frames per second per call,
its own loop lag) and the load average: a row where the generator starved measured the machine.

"CPU ms per decoded call-s" divides the server's CPU by the caller audio it actually decoded (50 frames a
call-second): when the server or the generator falls behind, fewer frames arrive and CPU per wall-clock
call-second understates the cost of a call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import LOAD_CPU, PY, ROOT, Server, loadgen, log, pin, start_server

PORT = 18611  # not the ports bench/run.py uses: another engineer's `make bench` may be running
EMULATOR_PORT = 18631
STEPS = {
    "steady": lambda n: ["--calls", str(n), "--seconds", "15", "--warmup", "4"],
    "ramp": lambda n: ["--calls", str(n), "--seconds", "20", "--measure-setup", "--ramp", "0.1"],
}


def extract(revision: str, into: Path) -> Path:
    tree = into / revision.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def external_emulator(certs: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`parley emulator` in its own process on the load generator's core, as bench/run.py's stalls do."""
    process = subprocess.Popen(
        [PY, "-m", "parley.cli", "emulator", "--port", str(EMULATOR_PORT), "--cert-dir", str(certs)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin(LOAD_CPU),
    )
    deadline = time.monotonic() + 30
    while not (certs / "ca.pem").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    env = {
        "GEMINI_API_KEY": "bench-not-a-key",
        "GOOGLE_GEMINI_BASE_URL": f"https://127.0.0.1:{EMULATOR_PORT}",
        "SSL_CERT_FILE": str(certs / "ca.pem"),
    }
    return process, env


def step(server: Server, args: list[str]) -> dict[str, Any]:
    before = server.metrics()
    result, numbers = loadgen(server, args)
    after = server.metrics()

    def delta(kind: str) -> float:
        key = f"parley_downlink_frames_total{{kind={kind}}}"
        return float(after.get(key, 0.0) - before.get(key, 0.0))

    lag = numbers.get("loop_lag", {})
    decoded = numbers.get("uplink_decoded") or 0.0
    cpu_s = numbers.get("cpu_core_share", 0.0) * result.get("seconds", 0.0)
    sent = delta("audio") + delta("silent")
    return {
        "cpu_ms_per_call_s": numbers.get("cpu_ms_per_call_s"),
        "cpu_ms_per_decoded_call_s": round(cpu_s * 1000 / (decoded / 50), 2) if decoded else None,
        "core_share": numbers.get("cpu_core_share"),
        "loop_lag_ms": {key: lag.get(key) for key in ("p50", "p99", "max_at_most", "count")},
        "frames_per_s": result.get("frames_per_s"),
        "loadgen_lag_p99_ms": result.get("loadgen_loop_lag_ms", {}).get("p99"),
        "connected": result.get("connected"),
        "downlink_silent_share": round(delta("silent") / sent, 3) if sent else None,
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions (main, HEAD, a hash)")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="steady,ramp")
    parser.add_argument("--backend", choices=["emulator", "gemini"], default="emulator")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "loop_ab.jsonl")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {rev: extract(rev, Path(scratch)) for rev in args.revisions}
        emulator: subprocess.Popen[bytes] | None = None
        env: dict[str, str] = {}
        if args.backend == "gemini":
            certs = Path(scratch) / "certs"
            certs.mkdir()
            emulator, env = external_emulator(certs)
        try:
            for round_ in range(args.rounds):
                for rev, tree in trees.items():
                    server = start_server(args.backend, PORT, env, root=tree)
                    try:
                        for name in args.steps.split(","):
                            row = {"revision": rev, "round": round_, "step": name, "calls": args.calls}
                            row.update(backend=args.backend, at=time.strftime("%Y-%m-%d %H:%M:%S"))
                            row.update(step(server, STEPS[name](args.calls)))
                            print(json.dumps(row), flush=True)
                            with args.out.open("a") as out:
                                out.write(json.dumps(row) + "\n")
                            lag = row["loop_lag_ms"]
                            log(
                                f"{rev:10s} {name:6s} cpu {row['cpu_ms_per_call_s']} ms/call-s"
                                f" ({row['cpu_ms_per_decoded_call_s']} per decoded) core {row['core_share']}"
                                f" lag p50/p99/max {lag['p50']}/{lag['p99']}/{lag['max_at_most']}"
                                f" fps {row['frames_per_s']} loadgen lag99 {row['loadgen_lag_p99_ms']}"
                                f" load {row['load_average']}"
                            )
                    finally:
                        server.stop()
        finally:
            if emulator is not None:
                emulator.terminate()
                emulator.wait(10)


if __name__ == "__main__":
    main()
