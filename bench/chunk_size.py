"""What the uplink chunk size costs: CPU of the SDK's send path per second of audio, by chunk size.

The emulator runs in its own process so only the agent side (the SDK's pydantic models, JSON, base64,
TLS) is measured here. A chunk of N ms also makes the first sample of each chunk wait N - 20 ms for the
rest of it, which is the latency side of the trade.

    python -m bench.chunk_size
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from google import genai
from google.genai import types

AUDIO_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def cost_per_audio_second(base_url: str, ca_file: str, chunk_ms: int) -> float:
    import ssl

    client = genai.Client(
        api_key="bench",
        http_options=types.HttpOptions(
            base_url=base_url,
            api_version="v1beta",
            async_client_args={"ssl": ssl.create_default_context(cafile=ca_file)},
        ),
    )
    chunk = bytes(32 * chunk_ms)  # silence: the emulator's VAD stays idle
    count = int(AUDIO_S * 1000 / chunk_ms)
    async with client.aio.live.connect(model="gemini-3.8-live", config=types.LiveConnectConfig()) as session:
        started = time.process_time()
        for _ in range(count):
            await session.send_realtime_input(audio=types.Blob(data=chunk, mime_type="audio/pcm;rate=16000"))
        return (time.process_time() - started) / AUDIO_S


async def main() -> None:
    port = free_port()
    cert_dir = tempfile.mkdtemp()
    emulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli",
        "emulator",
        "--port",
        str(port),
        "--cert-dir",
        cert_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        ca_file = next(
            os.path.join(cert_dir, f) for f in os.listdir(cert_dir) if "ca" in f and f.endswith(".pem")
        )
        results = {}
        for chunk_ms in (20, 40, 60, 100):
            best = min(
                [
                    await cost_per_audio_second(f"https://127.0.0.1:{port}", ca_file, chunk_ms)
                    for _ in range(3)
                ]
            )
            results[chunk_ms] = {"cpu_ms_per_audio_s": round(best * 1000, 2), "added_wait_ms": chunk_ms - 20}
        print(json.dumps(results, indent=2))
    finally:
        emulator.terminate()
        await emulator.wait()


if __name__ == "__main__":
    asyncio.run(main())
