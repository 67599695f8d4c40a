"""Tables (markdown) and plots (PNG) from bench/run.py's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVERS = ("parley", "baseline")
LABELS = {"parley": "Parley (loopback backend)", "baseline": "plain aiortc echo"}


def rated(rows: list[dict[str, Any]], server: str) -> int:
    """The largest N this server kept real time at."""
    return max((r["calls"] for r in rows if r["server"] == server and r["real_time"]), default=0)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def capacity_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| server | calls | real time | RTT p50 / p95 / p99 ms | RTT p95 drift ms | min frames/s "
        "| CPU ms per call-s | RSS MB per call | loop lag p99 ms | uplink p95 ms | downlink p95 ms |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["calls"], r["server"] != "parley")):
        load = r["load"]
        rtt = load["rtt_ms"]
        out.append(
            f"| {r['server']} | {r['calls']} | {fmt(r['real_time'])} "
            f"| {fmt(rtt['p50'])} / {fmt(rtt['p95'])} / {fmt(rtt['p99'])} "
            f"| {fmt(load['rtt_growth_ms'].get('p95_drift'))} | {fmt(load['frames_per_s']['min'])} "
            f"| {fmt(r.get('cpu_ms_per_call_s'))} | {fmt(r.get('rss_mb_per_call'), 2)} "
            f"| {fmt(r.get('loop_lag', {}).get('p99'))} | {fmt(r.get('uplink', {}).get('p95'))} "
            f"| {fmt(r.get('downlink', {}).get('p95'))} |"
        )
    return out


def headline(results: dict[str, Any]) -> list[str]:
    rows = results.get("capacity", [])
    if not rows:
        return []
    caps = {s: rated(rows, s) for s in SERVERS}

    def at(server: str, calls: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["server"] == server and r["calls"] == calls), None)

    out = ["| | Parley | plain aiortc | Parley / aiortc |", "|---|---:|---:|---:|"]
    out.append(
        f"| calls one core holds in real time | {caps['parley']} | {caps['baseline']} "
        f"| {ratio(caps['parley'], caps['baseline'])} |"
    )
    first = min(r["calls"] for r in rows)
    for calls in sorted({first, caps["baseline"]} - {0}):
        p, b = at("parley", calls), at("baseline", calls)
        if p is None or b is None:
            continue
        for key, label in (("p50", "RTT p50"), ("p95", "RTT p95")):
            pv, bv = p["load"]["rtt_ms"][key], b["load"]["rtt_ms"][key]
            out.append(f"| {label} at {calls} calls (ms) | {fmt(pv)} | {fmt(bv)} | {ratio(pv, bv)} |")
        pc, bc = p.get("cpu_ms_per_call_s"), b.get("cpu_ms_per_call_s")
        out.append(f"| CPU ms per call-second at {calls} calls | {fmt(pc)} | {fmt(bc)} | {ratio(pc, bc)} |")
        pr, br = p.get("rss_mb_per_call"), b.get("rss_mb_per_call")
        out.append(f"| RSS MB per call at {calls} calls | {fmt(pr, 2)} | {fmt(br, 2)} | {ratio(pr, br)} |")
    return out


def loss_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| server | uplink loss | packets dropped | RTT p50 / p95 ms | RTT growth ms | concealed | recovered "
        "| speech SNR dB (mean, min) |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["server"] != "parley", r["loss"])):
        load = r["load"]
        out.append(
            f"| {r['server']} | {r['loss'] * 100:.0f} % | {load['packets_dropped']} "
            f"| {fmt(load['rtt_ms']['p50'])} / {fmt(load['rtt_ms']['p95'])} "
            f"| {fmt(load['rtt_growth_ms']['max'])} | {fmt(r.get('uplink_concealed'), 0)} "
            f"| {fmt(r.get('uplink_recovered'), 0)} "
            f"| {fmt(load['snr_db']['mean'])}, {fmt(load['snr_db']['min'])} |"
        )
    return out


def setup_table(setup: dict[str, Any]) -> list[str]:
    out = [
        "| server | answer ms p50 (max) | connected ms p50 | first audio ms p50 "
        "| first audio after the answer ms p50 (max) |",
        "|---|---|---:|---:|---|",
    ]
    for server, s in setup.items():
        after = s["first_audio_after_answer_ms"]
        out.append(
            f"| {server} | {fmt(s['answer_ms']['p50'])} ({fmt(s['answer_ms']['max'])}) "
            f"| {fmt(s['connect_ms']['p50'])} | {fmt(s['first_audio_ms']['p50'])} "
            f"| {fmt(after['p50'])} ({fmt(after['max'])}) |"
        )
    return out


def bargein_table(b: dict[str, Any]) -> list[str]:
    def triple(d: dict[str, Any]) -> str:
        return f"{fmt(d.get('p50'))} / {fmt(d.get('p95'))} / {fmt(d.get('p99'))} ({fmt(d.get('count'), 0)})"

    return [
        "| measure | p50 / p95 / p99 ms (samples) |",
        "|---|---|",
        f"| barge-in: cut to the first frame after it (server) | {triple(b['server_bargein_ms'])} |",
        f"| end of speech to the answer's first audio (server) | {triple(b['server_response_ms'])} |",
        f"| uplink added latency (emulator backend) | {triple(b['server_uplink_ms'])} |",
        f"| downlink added latency (emulator backend) | {triple(b['server_downlink_ms'])} |",
        f"| `interrupted` event to silence at the caller (p50, max) "
        f"| {fmt(b['client_event_to_silence_ms']['p50'])}, {fmt(b['client_event_to_silence_ms']['max'])} |",
        f"| interruptions by source | {b.get('interrupted_by')} |",
    ]


def stalls_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| server | calls | loop lag p50 / p99 ms | max ms (at most) | samples | CPU (core) "
        "| min frames/s | caller frames decoded per call-s | answers | load generator lag p99 ms "
        "| host loop ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lag, load = r.get("loop_lag", {}), r["load"]
        call_seconds = load["connected"] * load["seconds"]
        decoded = r["uplink_decoded"] / call_seconds if "uplink_decoded" in r and call_seconds else None
        out.append(
            f"| {r['server']} | {r['calls']} | {fmt(lag.get('p50'))} / {fmt(lag.get('p99'))} "
            f"| {fmt(lag.get('max_at_most'))} | {fmt(lag.get('count'), 0)} "
            f"| {fmt(r.get('cpu_core_share'), 2)} "
            f"| {fmt(load['frames_per_s']['min'])} | {fmt(decoded)} "
            f"| {fmt(r.get('response', {}).get('count'), 0)} "
            f"| {fmt(load['loadgen_loop_lag_ms']['p99'])} | {fmt(r.get('host_loop_ms'), 0)} |"
        )
    return out


def plots(results: dict[str, Any], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = results.get("capacity", [])
    if rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for server, color in zip(SERVERS, ("tab:blue", "tab:red"), strict=True):
            mine = sorted((r for r in rows if r["server"] == server), key=lambda r: r["calls"])
            n = [r["calls"] for r in mine]
            for key, style in (("p50", "-"), ("p95", "--")):
                ax1.plot(
                    n,
                    [r["load"]["rtt_ms"][key] or float("nan") for r in mine],
                    style,
                    color=color,
                    marker="o",
                    label=f"{LABELS[server]} {key}",
                )
            ax2.plot(
                n,
                [r.get("cpu_ms_per_call_s") or float("nan") for r in mine],
                "-o",
                color=color,
                label=LABELS[server],
            )
            failed = [r for r in mine if not r["real_time"]]
            ax1.plot(
                [r["calls"] for r in failed],
                [r["load"]["rtt_ms"]["p95"] or float("nan") for r in failed],
                "x",
                color="black",
                markersize=10,
                label="not real time" if server == "parley" else None,
            )
        ax1.set(
            xlabel="concurrent calls (one core)",
            ylabel="round trip at the caller, ms",
            yscale="log",
            title="Round trip, marker in to marker out (x: step not in real time)",
        )
        ax2.set(
            xlabel="concurrent calls (one core)",
            ylabel="server CPU ms per call-second",
            title="Server CPU per call",
        )
        ax2.axhline(25, color="gray", ls=":", label="target 25 ms")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs / "bench-capacity.png", dpi=110)
        plt.close(fig)
        made.append("bench-capacity.png")
    loss = results.get("loss", [])
    if loss:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for server, color in zip(SERVERS, ("tab:blue", "tab:red"), strict=True):
            mine = sorted((r for r in loss if r["server"] == server), key=lambda r: r["loss"])
            x = [r["loss"] * 100 for r in mine]
            ax1.plot(
                x,
                [r["load"]["rtt_ms"]["p95"] or float("nan") for r in mine],
                "-o",
                color=color,
                label=f"{LABELS[server]} p95",
            )
            ax1.plot(
                x,
                [r["load"]["rtt_growth_ms"]["max"] or 0 for r in mine],
                ":",
                color=color,
                label=f"{LABELS[server]} growth during the run",
            )
            ax2.plot(
                x,
                [r["load"]["snr_db"]["mean"] or float("nan") for r in mine],
                "-o",
                color=color,
                label=LABELS[server],
            )
        ax1.set(xlabel="uplink packets dropped, %", ylabel="ms", title="Round trip under uplink loss")
        ax2.set(
            xlabel="uplink packets dropped, %",
            ylabel="dB",
            title="SNR of the echoed speech vs the clean copy",
        )
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs / "bench-loss.png", dpi=110)
        plt.close(fig)
        made.append("bench-loss.png")
    return made


def write_report(results: dict[str, Any], path: Path, docs: Path) -> None:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"aiortc {m['aiortc']}; {m['date']}; load average before the run {m['load_before']}"
        f"; a fixed Python loop took {m.get('host_loop_ms', '?')} ms of CPU (bench/run.py: host_loop_ms).",
        "",
    ]
    if results.get("capacity"):
        lines += [
            "### Headline",
            "",
            *headline(results),
            "",
            "### Capacity ladder",
            "",
            *capacity_table(results["capacity"]),
            "",
        ]
    if results.get("setup"):
        lines += [
            "### Call set-up (idle server, calls one after another)",
            "",
            *setup_table(results["setup"]),
            "",
        ]
    if results.get("profiles"):
        lines += [
            "### Agent profiles: set-up with a profile chosen (50 profiles, variables filled in)",
            "",
            *setup_table(results["profiles"]),
            "",
            "Choosing the profile in itself (admitting agent and variables, making the session "
            f"configuration): {results['profiles']['parley+agents'].get('lookup_us')} µs per call.",
            "",
        ]
    if results.get("loss"):
        lines += ["### Uplink loss sweep (2 calls)", "", *loss_table(results["loss"]), ""]
    if results.get("video"):
        from bench.video import video_table

        summary = results["video"]["summary"]
        lines += ["### Camera on top of audio (loopback backend)", "", *video_table(summary), ""]
    if results.get("bargein"):
        lines += [
            "### Barge-in and answer timing (emulator backend, 1 call)",
            "",
            *bargein_table(results["bargein"]),
            "",
        ]
    if results.get("browser"):
        lines += [
            "### Mouth-to-ear in Chromium (loopback backend)",
            "",
            "| setting | bursts | mouth-to-ear p50 / p95 ms | jitter buffer ms | its target ms "
            "| concealed % |",
            "|---|---:|---|---:|---:|---:|",
            *(
                f"| {r['setting']} | {r['bursts']} | {fmt(r['mouth_to_ear_ms']['p50'])} / "
                f"{fmt(r['mouth_to_ear_ms']['p95'])} | {fmt(r['jitter_buffer_ms'])} | "
                f"{fmt(r['jitter_target_ms'])} | {fmt(r['concealed_pct'], 2)} |"
                for r in results["browser"]
                if "error" not in r  # a call that failed is in the JSON, with its error
            ),
            "",
        ]
    if results.get("stalls"):
        lines += [
            "### Event-loop lag through call set-ups and turns",
            "",
            *stalls_table(results["stalls"]),
            "",
            '"server first": the load generator and the emulator run at SCHED_IDLE, on CPU time the',
            "server's processes leave, as if the callers and Gemini were on other machines; their own",
            "figures (frames/s, their loop lag) are then not the server's, the frames it decoded are.",
            '"host loop": CPU ms of a fixed Python loop just before the row (bench/run.py: host_loop_ms);',
            "it grows when a shared host's neighbours slow this machine down, and the CPU and lag with it.",
            "",
        ]
    docs.mkdir(parents=True, exist_ok=True)
    for png in plots(results, docs):
        lines += [f"![{png}]({png})", ""]
    path.write_text("\n".join(lines))
