"""`make bench`: Parley against plain aiortc, the same load in the same run, reported as ratios.

    python -m bench.run [--quick] [--out bench/out] [--docs docs]

Each server runs in its own process pinned to CPU 0, the load generator (bench/loadgen.py) in another,
pinned to CPU 1, so "calls per core" is what one core holds. Servers: `parley serve --backend loopback`
(each chunk of the caller's audio goes back down the whole agent path), the plain-aiortc echo in
bench/baseline_server.py, and `parley serve --backend emulator` for barge-in and the model's own timing.
The server's CPU comes from /proc (all its threads), its timings from its /metrics.

Writes out/results.json, out/report.md (the tables) and the plots as PNGs into docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.agent.metrics import histogram_quantile, parse_histograms

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVER_CPU = 0
LOAD_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
LATENCIES = {
    "uplink": "parley_uplink_latency_seconds",
    "downlink": "parley_downlink_latency_seconds",
    "loop_lag": "parley_event_loop_lag_seconds",
    "bargein": "parley_bargein_stop_seconds",
    "response": "parley_response_seconds",
}


def pin(cpu: int) -> Any:
    def set_affinity() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})

    return set_affinity


def yield_to_server(pid: int = 0) -> None:
    """Run process `pid` (0: this one, before it starts threads) only on CPU time the server leaves:
    SCHED_IDLE, on every core. For rows that judge the server's event loop on a machine too small to give
    the callers and Gemini cores of their own; what that process measures itself (round trips, frames a
    second) is then not the server's."""
    threads = [] if pid else [0]
    if pid:
        with contextlib.suppress(OSError):  # gone: nothing to do
            threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    for thread in threads:  # both calls set one thread only
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread, range(os.cpu_count() or 1))
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """The server's CPU seconds, with its media processes' (`parley serve --processes`)."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if stat.parent.name == str(self.process.pid) or fields[1] == str(self.process.pid):
                    total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return str(response.read().decode())

    def metrics(self) -> dict[str, Any]:
        return parse_histograms(self.get("/metrics"), leave_out="front")

    def active_calls(self) -> int:
        return int(json.loads(self.get("/healthz")).get("active_calls", 0))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(
    kind: str, port: int, extra_env: dict[str, str] | None = None, root: Path = ROOT, processes: int = 1
) -> Server:
    """`root`: the source tree the server runs from (bench/loop_ab.py runs older revisions); `processes`:
    `parley serve --processes` (not pinned then: its media processes are for the machine's cores)."""
    env = {
        **os.environ,
        "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1",
        "PARLEY_NO_MEDIA_TIMEOUT": "30",
        "PARLEY_RATE_LIMIT": "0",  # every benchmark call comes from one address
        # records off unless asked (bench/records_cost.py measures them on against off)
        "PARLEY_DATABASE_URL": "none",
        **(extra_env or {}),
    }
    if kind == "baseline":
        cmd = [PY, "-m", "bench.baseline_server", "--port", str(port)]
    else:
        backend, _, variant = kind.partition(":")  # "loopback:aiortc-encoder": bench/variants.py
        launcher = ["bench.variants", variant] if variant else ["parley.cli"]
        cmd = [PY, "-m", *launcher, "--log-level", "WARNING", "serve", "--backend", backend]
        cmd += ["--port", str(port), "--processes", str(processes)]
        env.pop("GEMINI_API_KEY", None)
        env.pop("GOOGLE_API_KEY", None)
    env.update(extra_env or {})
    if root != ROOT:
        env["PYTHONPATH"] = str(root)  # its `parley`, not this checkout's (installed editable)
    process = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin(SERVER_CPU) if processes == 1 else None,
    )
    server = Server(kind, port, process)
    deadline = time.monotonic() + 30 * processes
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            server.get("/healthz")
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{kind} server did not start")


def delta_histogram(before: dict[str, Any], after: dict[str, Any], name: str) -> dict[str, float | None]:
    a, b = after.get(name), before.get(name)
    if a is None:
        return {"p50": None, "p95": None, "p99": None, "count": 0}
    prior = {bound: count for bound, count in (b["buckets"] if b else [])}
    buckets = [(bound, count - prior.get(bound, 0.0)) for bound, count in a["buckets"]]
    count = a["count"] - (b["count"] if b else 0.0)

    def q(x: float) -> float | None:
        value = histogram_quantile(buckets, x)
        return None if value is None else round(value * 1000, 2)

    # the largest sample is somewhere in the first bucket that holds them all: its upper bound
    top = next((bound for bound, n in buckets if n >= count), None) if count else None
    peak = None if top is None or top == float("inf") else round(top * 1000, 2)
    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max_at_most": peak, "count": count}


def loadgen(
    server: Server, args: list[str], server_first: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the load generator; returns its result and the server's numbers over the measured window.
    `server_first`: the load generator runs with `yield_to_server` instead of on its own core."""
    env = {**os.environ, "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1"}
    cmd = [PY, "-m", "bench.loadgen", server.url, *args]
    process = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=yield_to_server if server_first else pin(LOAD_CPU),
    )
    assert process.stdout is not None
    rss_idle = server.rss_mb()
    window: dict[str, Any] = {}
    result: dict[str, Any] = {}
    for raw in process.stdout:
        line = raw.decode().strip()
        if line == "MEASURE start":
            window.update(cpu0=server.cpu_s(), t0=time.monotonic(), m0=server.metrics())
        elif line == "MEASURE end":
            window.update(cpu1=server.cpu_s(), t1=time.monotonic(), m1=server.metrics(), rss=server.rss_mb())
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and server.active_calls():
        time.sleep(0.2)
    numbers: dict[str, Any] = {}
    if "cpu1" in window:
        seconds = window["t1"] - window["t0"]
        calls = max(1, result.get("connected", 1))
        cpu = window["cpu1"] - window["cpu0"]
        numbers = {
            "cpu_ms_per_call_s": round(cpu * 1000 / (calls * seconds), 2),
            "cpu_core_share": round(cpu / seconds, 3),
            "rss_mb_per_call": round((window["rss"] - rss_idle) / calls, 3),
            "rss_mb": round(window["rss"], 1),
        }
        for key, name in LATENCIES.items():
            numbers[key] = delta_histogram(window["m0"], window["m1"], name)
        m0, m1 = window["m0"], window["m1"]
        video = {k: v - m0.get(k, 0.0) for k, v in m1.items() if k.startswith("parley_video_")}
        if video:
            numbers["video_metrics"] = video
        video_frames = m1.get("parley_video_frames_total", 0.0) - m0.get("parley_video_frames_total", 0.0)
        numbers["video_frames_per_call_s"] = round(video_frames / (calls * seconds), 3)
        for outcome in ("concealed", "recovered", "decoded"):
            key = f"parley_uplink_frames_total{{outcome={outcome}}}"
            if key in m1:
                numbers[f"uplink_{outcome}"] = m1[key] - m0.get(key, 0.0)
    return result, numbers


# The load generator shares the machine: a step where its own event loop lagged this much measured the
# load generator, not the server, and is run again (the attempt with the least lag is kept).
LOADGEN_LAG_LIMIT_MS = 20.0
ATTEMPTS = 2


def measured_load(server: Server, args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    best: tuple[dict[str, Any], dict[str, Any]] | None = None
    for _ in range(ATTEMPTS):
        result, numbers = loadgen(server, args)
        lag = result.get("loadgen_loop_lag_ms", {}).get("p99") or 0.0
        result["attempts"] = (best[0]["attempts"] if best else 0) + 1
        if best is None or lag < (best[0].get("loadgen_loop_lag_ms", {}).get("p99") or 0.0):
            best = (result, numbers)
        if lag <= LOADGEN_LAG_LIMIT_MS:
            break
        log(f"  (load generator lagged {lag} ms: again)")
    assert best is not None
    return best


def real_time(result: dict[str, Any], calls: int) -> bool:
    """Every call got 50 frames a second, every marker came back, and the round trip did not grow: its p95
    over all calls in the second half of the window is within 20 ms of the first half's."""
    drift = result.get("rtt_growth_ms", {}).get("p95_drift")
    return (
        result.get("connected") == calls
        and result.get("frames_per_s", {}).get("min", 0) >= 49.0
        and result.get("markers_lost", 1) == 0
        and drift is not None
        and drift <= 20.0
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def capacity(servers: dict[str, Server], ladder: list[int], seconds: float) -> list[dict[str, Any]]:
    """The same load on each server, step by step, interleaved, until neither keeps real time."""
    rows: list[dict[str, Any]] = []
    failed: dict[str, int] = {name: 0 for name in servers}
    for n in ladder:
        for name, server in servers.items():
            if failed[name] >= 2:
                continue
            # set-up of many calls at once stalls any server for a moment: let that settle first
            args = ["--calls", str(n), "--seconds", str(seconds), "--warmup", str(2 + n / 20)]
            result, numbers = measured_load(server, args)
            ok = real_time(result, n)
            if not ok:  # the machine is shared: a step fails only if it fails twice
                log(f"  ({name} N={n} not real time: once more)")
                again, again_numbers = measured_load(server, args)
                if real_time(again, n):
                    result, numbers, ok = again, again_numbers, True
            failed[name] = 0 if ok else failed[name] + 1
            rows.append({"server": name, "calls": n, "real_time": ok, **numbers, "load": result})
            log(
                f"{name:9s} N={n:3d} rt={ok!s:5s}"
                f" rtt p50/p95={result['rtt_ms']['p50']}/{result['rtt_ms']['p95']}"
                f" cpu={numbers.get('cpu_ms_per_call_s')} ms/call-s fps={result['frames_per_s']['min']}"
                f" drift={result['rtt_growth_ms']['p95_drift']}"
                f" lag99={numbers.get('loop_lag', {}).get('p99')}"
                f" loadgen lag99={result['loadgen_loop_lag_ms']['p99']}"
            )
        if all(f >= 2 for f in failed.values()):
            break
    return rows


def loss_sweep(servers: dict[str, Server], losses: list[float], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for loss in losses:
        for name, server in servers.items():
            args = ["--calls", "2", "--seconds", str(seconds), "--loss", str(loss), "--record"]
            result, numbers = measured_load(server, args)
            rows.append({"server": name, "loss": loss, **numbers, "load": result})
            log(
                f"{name:9s} loss={loss:.2f} rtt p50/p95={result['rtt_ms']['p50']}/{result['rtt_ms']['p95']}"
                f" growth={result['rtt_growth_ms']['max']} snr={result['snr_db']['mean']}"
                f" concealed={numbers.get('uplink_concealed')} recovered={numbers.get('uplink_recovered')}"
            )
    return rows


def ablation(calls: int, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """CPU per call-second at one load, for Parley with each optimisation undone, and the baseline."""
    kinds = {
        "parley": "loopback",
        "parley, aiortc encoder + numpy level": "loopback:aiortc-encoder-numpy-level",
        "parley, aiortc encoder (before)": "loopback:aiortc-encoder",
        "baseline": "baseline",
    }
    rows = []
    for name, kind in kinds.items():
        server = start_server(kind, 18301)
        try:
            for _ in range(rounds):
                result, numbers = measured_load(server, ["--calls", str(calls), "--seconds", str(seconds)])
                rows.append({"server": name, "calls": calls, **numbers, "load": result})
                log(
                    f"{name:38s} N={calls} cpu={numbers.get('cpu_ms_per_call_s')} ms/call-s "
                    f"rtt p50={result['rtt_ms']['p50']} fps={result['frames_per_s']['min']}"
                )
        finally:
            server.stop()
    return rows


def loop_stalls(calls: list[int], seconds: float) -> list[dict[str, Any]]:
    """The event loop's lag over a window that takes in every call's set-up (one starting every 0.1 s)
    and two turns of each (the emulator's reply to the test sentence, then the next sentence).

    Twice: `parley serve` with its embedded emulator (the offline default: the emulator's work shares
    the agent's loop and core), and `--backend gemini` against `parley emulator` in a process of its
    own on the load generator's core (as with Gemini: the agent's process does only the agent's work)."""
    rows = []
    with tempfile.TemporaryDirectory() as certs:
        emulator = subprocess.Popen(
            [PY, "-m", "parley.cli", "emulator", "--port", "18231", "--cert-dir", certs],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pin(LOAD_CPU),
        )
        external = {
            "GEMINI_API_KEY": "bench-not-a-key",
            "GOOGLE_GEMINI_BASE_URL": "https://127.0.0.1:18231",
            "SSL_CERT_FILE": str(Path(certs) / "ca.pem"),
        }
        try:
            deadline = time.monotonic() + 30
            while not (Path(certs) / "ca.pem").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            pool = max(2, os.cpu_count() or 1)  # one media process per core
            # the last row gives the server's processes the machine first (`yield_to_server`): on a machine
            # with fewer cores than the server, the callers and Gemini together need, it is the one row
            # that judges the server's loop rather than the machine
            runs: list[tuple[str, dict[str, str] | None, list[int], int, bool]] = [
                ("emulator", None, calls, 1, False),
                ("gemini", external, calls[-1:], 1, False),
                ("gemini", external, calls[-1:], pool, False),
                ("gemini", external, calls[-1:], pool, True),
            ]
            for kind, env, steps, processes, server_first in runs:
                if server_first:
                    yield_to_server(emulator.pid)  # last: it stays so
                server = start_server(kind, 18211, env, processes=processes)
                try:
                    for n in steps:
                        rows.append(stall_step(server, kind, n, seconds, processes, server_first))
                finally:
                    server.stop()
        finally:
            emulator.terminate()
            emulator.wait(10)
    return rows


def stall_step(
    server: Server, kind: str, n: int, seconds: float, processes: int = 1, server_first: bool = False
) -> dict[str, Any]:
    args = ["--calls", str(n), "--seconds", str(seconds), "--measure-setup", "--ramp", "0.1"]
    speed = host_loop_ms()
    if server_first:  # its own loop lags by design here: no second attempt
        result, numbers = loadgen(server, args, server_first=True)
    else:
        result, numbers = measured_load(server, args)
    lag = numbers.get("loop_lag", {})  # with media processes: theirs together, not the front door's
    name = "parley, embedded emulator" if kind == "emulator" else "parley, emulator in its own process"
    if processes > 1:
        name = f"parley --processes {processes}, emulator in its own process"
    if server_first:
        name += ", server first"
    log(
        f"{kind:9s} P={processes} N={n:3d} loop lag p50/p99/max<={lag.get('p50')}/{lag.get('p99')}/"
        f"{lag.get('max_at_most')} ms (samples {lag.get('count')})"
        f" cpu={numbers.get('cpu_core_share')} core fps={result['frames_per_s']['min']}"
        f" decoded={numbers.get('uplink_decoded')}"
        f" turns={numbers.get('response', {}).get('count')}"
        f" loadgen lag99={result['loadgen_loop_lag_ms']['p99']} host loop={speed} ms"
    )
    return {"server": name, "calls": n, **numbers, "load": result, "host_loop_ms": speed}


def setup_times(servers: dict[str, Server], calls: int) -> dict[str, Any]:
    out = {}
    for name, server in servers.items():
        result, _ = loadgen(server, ["--setup", str(calls)])
        out[name] = result
        log(f"{name:9s} setup {result}")
    return out


AGENTS = 50  # profiles in the file of the `parley+agents` server


def agents_file(directory: Path) -> Path:
    """An agents file of AGENTS profiles, each with variables, an instruction and a greeting to fill in."""
    tables = [
        f'[agents.agent-{n}]\nsystem_instruction = "Agent {n} helps {{customer_name}} with {{order_id}}."\n'
        f'greeting = "Hello {{customer_name}}."\nvariables = {{ customer_name = 40, order_id = 20 }}\n'
        for n in range(AGENTS)
    ]
    path = directory / "agents.toml"
    path.write_text("\n".join(tables))
    return path


def profile_setup(servers: dict[str, Server], out_dir: Path, calls: int, rounds: int) -> dict[str, Any]:
    """Set-up on the plain server and on one holding AGENTS profiles (the call naming the last one, with
    variables), in alternating rounds so drift hits both alike: what choosing a profile costs."""
    agents = start_server("loopback", 18211, {"PARLEY_AGENTS": str(agents_file(out_dir))})
    variables = json.dumps({"customer_name": "Ada", "order_id": "A-17"})
    choice = ["--agent", f"agent-{AGENTS - 1}", "--variables", variables]
    plain = ["--variables", "{}"]  # JSON offers both: only the profile differs
    answers: dict[str, list[float]] = {"parley": [], "parley+agents": []}
    results: dict[str, Any] = {}
    try:
        runs = (("parley", servers["parley"], plain), ("parley+agents", agents, choice))
        for _ in range(rounds):
            for name, server, extra in runs:
                result, _ = loadgen(server, ["--setup", str(calls), *extra])
                answers[name].append(result["answer_ms"]["p50"])
                results[name] = result
    finally:
        agents.stop()
    for name, values in answers.items():
        results[name]["answer_ms"]["p50"] = round(sorted(values)[len(values) // 2], 2)
        results[name]["answer_ms_rounds"] = values
    results["parley+agents"]["lookup_us"] = lookup_us(agents_file(out_dir))
    log(
        f"profile lookup: answer p50 {results['parley']['answer_ms']['p50']} ms without agents, "
        f"{results['parley+agents']['answer_ms']['p50']} ms with {AGENTS}"
    )
    return results


def lookup_us(path: Path, repeat: int = 2000) -> float:
    """What choosing a profile costs in itself, in this process: admitting the agent and its variables,
    then making the call's session configuration (instruction and greeting filled in), in microseconds."""
    from parley.agent.live_config import SessionConfig
    from parley.agent.loopback import loopback_sessions
    from parley.agent.tools import ToolRegistry
    from parley.agent_plans import call_planner
    from parley.profiles import ProfileStore

    store = ProfileStore.open(str(path))
    echo = loopback_sessions()  # made, not started: only the choosing is timed
    plan = call_planner(store, SessionConfig(), ToolRegistry(), lambda config: echo)
    variables = {"customer_name": "Ada", "order_id": "A-17"}
    started = time.perf_counter()
    for _ in range(repeat):
        admitted = store.catalog.admit(f"agent-{AGENTS - 1}", None, [], variables)
        plan("call-id", admitted.agent, admitted.variables)
    return round((time.perf_counter() - started) / repeat * 1e6, 1)


def bargein(server: Server, rounds: int) -> dict[str, Any]:
    from bench.bargein import measure

    before = server.metrics()
    client = asyncio.run(measure(server.url, rounds))
    after = server.metrics()
    out = {
        "server_bargein_ms": delta_histogram(before, after, LATENCIES["bargein"]),
        "server_response_ms": delta_histogram(before, after, LATENCIES["response"]),
        "server_downlink_ms": delta_histogram(before, after, LATENCIES["downlink"]),
        "server_uplink_ms": delta_histogram(before, after, LATENCIES["uplink"]),
        **client,
    }
    log(f"emulator  barge-in {out}")
    return out


def host_loop_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop: how fast this machine runs Python right now. On a
    shared host it grows when the neighbours are busy (160-330 ms over one afternoon on the 2026-12-07
    machine), and a row's CPU and lag figures with it."""
    started, total = time.process_time(), 0
    for i in range(3_000_000):
        total += i * i
    return round((time.process_time() - started) * 1000, 1)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import aiortc

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": os.getloadavg(),
        "host_loop_ms": host_loop_ms(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows and a short ladder (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--ladder", default="1,5,10,15,20,25,30,35,40,50,60,70,80")
    parts = "setup,profiles,capacity,ablation,loss,video,bargein,records,stalls,browser"
    parser.add_argument("--only", default=parts)
    parser.add_argument("--stall-calls", default="1,40", help="calls at each step of the stalls part")
    args = parser.parse_args()
    only = set(args.only.split(","))
    ladder = [int(n) for n in args.ladder.split(",")]
    # each half of the window must hold a group of markers (one every 8.4 s cycle of the test signal)
    window = 9.0 if args.quick else 17.0
    if args.quick:
        ladder = ladder[:3]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    servers = {"parley": start_server("loopback", 18181), "baseline": start_server("baseline", 18191)}
    try:
        if "setup" in only:
            results["setup"] = setup_times(servers, 5 if args.quick else 15)
        if "profiles" in only:
            rounds = 1 if args.quick else 3
            results["profiles"] = profile_setup(servers, out_dir, 5 if args.quick else 15, rounds)
        if "capacity" in only:
            results["capacity"] = capacity(servers, ladder, window)
        if "ablation" in only:
            results["ablation"] = ablation(20, 8.0, 1 if args.quick else 2)
        if "loss" in only:
            losses = [0.0, 0.05] if args.quick else [0.0, 0.01, 0.05, 0.10]
            results["loss"] = loss_sweep(servers, losses, 10.0 if args.quick else 18.0)
        if "video" in only:
            from bench.video import video_cost

            rounds = 1 if args.quick else 2
            results["video"] = video_cost(servers["parley"], measured_load, log, [1, 10], window, rounds)
    finally:
        for server in servers.values():
            server.stop()
    if "browser" in only:
        from bench import browser

        server = start_server("loopback", 18241)
        try:
            results["browser"] = asyncio.run(browser.measure(server.url, 6.0 if args.quick else 12.0))
        finally:
            server.stop()
    if "stalls" in only:
        stall_calls = [int(n) for n in args.stall_calls.split(",")]
        results["stalls"] = loop_stalls(stall_calls, 12.0 if args.quick else 20.0)
    if "bargein" in only:
        emulator = start_server("emulator", 18201)
        try:
            results["bargein"] = bargein(emulator, 2 if args.quick else 6)
        finally:
            emulator.stop()
    if "records" in only:  # records, webhooks and traces: bench/records_overhead.py, bench/records_cost.py
        from bench.records_cost import records_cost, summarise
        from bench.records_overhead import measure

        results["records"] = {
            "overhead": measure(),
            "whole_calls": summarise(
                records_cost([10] if args.quick else [10, 40], 2, window, "loopback", out_dir)
            ),
        }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    from bench.report import write_report

    write_report(results, out_dir / "report.md", Path(args.docs))
    log(f"results in {out_dir / 'results.json'}, tables in {out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
