"""What a call reports about its media: the summary a caller and the log see, and the running counters
the process's metrics sum over calls. Plain functions of the parts' own statistics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from parley.agent.downlink import PlayoutTrack
from parley.agent.session import SessionStats
from parley.agent.uplink import UplinkStats
from parley.agent.video import VideoPath

PCM_BYTES_PER_S = 32000  # 16 kHz mono s16: what the session counts


def percentiles(samples_s: Iterable[float]) -> dict[str, float] | None:
    """p50/p95/max in milliseconds of recent samples, or None before there are any."""
    values = sorted(samples_s)
    if not values:
        return None

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(values[-1] * 1000, 2), "count": len(values)}


def media_summary(
    stats: SessionStats,
    uplink: UplinkStats,
    track: PlayoutTrack,
    video: VideoPath | None,
    latencies_s: Mapping[str, Iterable[float]],
    seconds: float,
) -> dict[str, Any]:
    audio_s = stats.audio_bytes_sent / PCM_BYTES_PER_S
    seen = None if video is None else {**video.summary(), "tokens_reported": stats.video_tokens_reported}
    return {
        "uplink": {
            "packets": uplink.packets,
            "late": uplink.late,
            "concealed": uplink.concealed,
            "recovered": uplink.recovered,
            "decode_errors": uplink.decode_errors,
            "flood_dropped": uplink.flood_dropped,
            "audio_s_sent": round(audio_s, 2),
            "audio_s_per_call_s": round(audio_s / max(seconds, 1e-3), 3),
            "audio_s_resent": round(stats.audio_bytes_resent / PCM_BYTES_PER_S, 2),
            "audio_s_dropped": round(stats.audio_bytes_dropped / PCM_BYTES_PER_S, 2),
        },
        "downlink": {
            "frames": track.frames_sent,
            "silent_frames": track.silent_frames,
            "skipped_frames": track.frames_skipped,
        },
        "video": seen,
        "latency_ms": {name: percentiles(samples) for name, samples in latencies_s.items()},
        "gemini": {
            "connections": stats.connections,
            "reconnects": stats.reconnects,
            "goaways": stats.goaways,
            "fresh_restarts": stats.fresh_restarts,
            "tool_calls": stats.tool_calls,
            "switch_gaps_ms": list(stats.switch_gaps_ms),
            "tokens": {
                "prompt": stats.prompt_tokens,
                "response": stats.response_tokens,
                "total": stats.total_tokens,
                "input": dict(stats.input_tokens),
                "output": dict(stats.output_tokens),
            },
        },
    }


def media_counters(
    stats: SessionStats, uplink: UplinkStats, track: PlayoutTrack, video: VideoPath | None
) -> dict[str, float]:
    return {
        "decoded": uplink.packets,
        "late": uplink.late,
        "concealed": uplink.concealed,
        "recovered": uplink.recovered,
        "decode_error": uplink.decode_errors,
        "audio_frames": track.frames_sent - track.silent_frames,
        "silent_frames": track.silent_frames,
        "connections": stats.connections,
        "reconnects": stats.reconnects,
        "prompt": stats.prompt_tokens,
        "response": stats.response_tokens,
        "total": stats.total_tokens,
        "audio_s": stats.audio_bytes_sent / PCM_BYTES_PER_S,
        **({} if video is None else video.counters()),
    }
