"""`parley emulator`: run the Gemini Live emulator on its own until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal

from .options import EmulatorOptions
from .server import GeminiEmulator

log = logging.getLogger("emulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9443, help="port to listen on (default 9443; 0: any)")
    parser.add_argument(
        "--scenario", metavar="FILE", help="JSON object of emulator options (faults, timings)"
    )
    parser.add_argument("--lifetime", type=float, default=None, help="connection lifetime in seconds (600)")
    parser.add_argument(
        "--goaway-lead",
        type=float,
        default=None,
        help="goAway this long before the end (default by the model's rules: 50 s on 2.5, 60 s on 3.x)",
    )
    parser.add_argument(
        "--rules",
        choices=["2.5", "3.x"],
        default=None,
        help="behave like this model family for every model (default: by the setup's model name, "
        "gemini-3* is 3.x); see docs/gemini-3x-rules.md",
    )
    parser.add_argument("--reply-speed", type=float, default=None, help="reply send rate vs real time (4)")
    parser.add_argument("--reply-chunk-ms", type=int, default=None, help="audio per reply message (200)")
    parser.add_argument(
        "--reply-delay", type=float, default=None, help="seconds before a reply starts (0.05)"
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="PATTERN",
        help="accept models matching this fnmatch pattern (repeatable; default: gemini-*)",
    )
    parser.add_argument(
        "--cert-dir",
        metavar="DIR",
        help="keep the CA and certificate here and reuse them, so SSL_CERT_FILE stays valid across runs",
    )


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Scenario file first, then the explicit flags on top of it."""
    options = EmulatorOptions.from_json_file(args.scenario) if args.scenario else EmulatorOptions()
    overrides = {
        "lifetime_s": args.lifetime,
        "goaway_lead_s": args.goaway_lead,
        "rules": args.rules,
        "reply_speed": args.reply_speed,
        "reply_chunk_ms": args.reply_chunk_ms,
        "reply_delay_s": args.reply_delay,
        "model_patterns": args.model,
        "cert_dir": args.cert_dir,
    }
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


async def start(emulator: GeminiEmulator) -> None:
    await emulator.start()
    log.warning("Gemini Live emulator at %s (wss), CA certificate %s", emulator.base_url, emulator.ca_file)
    log.warning(
        "point the google-genai SDK at it with:\n"
        "  export GOOGLE_GEMINI_BASE_URL=%s\n"
        "  export SSL_CERT_FILE=%s",
        shlex.quote(emulator.base_url),
        shlex.quote(emulator.ca_file),
    )


async def stop(emulator: GeminiEmulator) -> None:
    log.warning("emulator shutting down (%d connections served)", len(emulator.connections))
    await emulator.stop()


async def _serve(emulator: GeminiEmulator) -> None:
    # `python -m parley.emulator` only: the emulator stands alone, so it cannot use parley.processes
    # (`parley emulator` does).
    stop_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop_now.set)
    await start(emulator)
    try:
        await stop_now.wait()
    finally:
        await stop(emulator)


def build(args: argparse.Namespace) -> GeminiEmulator:
    try:
        options = options_from_args(args)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"emulator: {exc}") from None
    return GeminiEmulator(host=args.host, port=args.port, options=options)


def run(args: argparse.Namespace) -> None:
    emulator = build(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(emulator))
