"""Calls come and go without leaving anything behind; the command line works end to end."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from parley.caller import Caller, load_wav
from parley.server import Running
from tests.audio import best_alignment

ROOT = Path(__file__).resolve().parent.parent


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(server: Running) -> None:
    for _ in range(100):
        if not server.worker.calls:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    gc.collect()


async def test_fifty_calls_in_a_row_leave_no_tasks_threads_or_fds(url: str, server: Running) -> None:
    async def one_call() -> None:
        caller = Caller(url)
        await caller.connect()
        caller.say(np.zeros(4800, np.int16))
        await asyncio.sleep(0.05)
        assert await caller.hang_up() == 204

    for _ in range(3):  # warm up pools and caches
        await one_call()
    await settle(server)
    tasks, threads, fds = len(asyncio.all_tasks()), threading.active_count(), open_fds()
    for _ in range(50):
        await one_call()
    await settle(server)
    assert server.worker.calls == {}
    assert len(asyncio.all_tasks()) <= tasks
    assert threading.active_count() <= threads + 2  # the default executor may add a worker or two
    assert open_fds() <= fds + 3
    assert server.worker.calls_ended.get("hangup", 0) >= 53


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parley_call_against_parley_serve(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PARLEY_ICE_HOST_ADDRESSES": "127.0.0.1"}
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        env.pop(key, None)
    serve = subprocess.Popen(
        [sys.executable, "-m", "parley.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        record = tmp_path / "heard.wav"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "parley.cli",
                "call",
                f"http://127.0.0.1:{port}",
                "--play",
                "tests/data/speech.wav",
                "--record",
                str(record),
                "--seconds",
                "13",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["connect_ms"] > 0 and summary["frames_sent"] > 400 and summary["audio_s_received"] > 8
        assert summary["hangup_status"] == 204
        assert summary["turns"][0]["response_ms"] is not None
        _, match = best_alignment(load_wav("tests/data/speech.wav"), load_wav(str(record)))
        assert match > 0.7
    finally:
        serve.terminate()
        output, _ = serve.communicate(timeout=15)
    assert serve.returncode == 0, output
    assert "emulator" in output  # it said it is running offline
