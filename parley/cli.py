"""The `parley` command: serve, emulator, call."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from parley import __version__
from parley.emulator import cli as emulator_cli
from parley.settings import Settings
from parley.system import libopus_missing


def _serve(args: argparse.Namespace) -> None:
    from parley.agent.tools import default_registry, load_tool_module
    from parley.signaling.access import refuse_public_without_secret

    settings = Settings.from_env()
    settings.host = args.host or settings.host
    settings.port = args.port if args.port is not None else settings.port
    if args.backend:
        settings.backend = args.backend
    settings.agents_file = args.agents or settings.agents_file
    refuse_public_without_secret(settings.host, settings.join_secret, args.allow_unauthenticated)
    for module in args.tools or []:
        load_tool_module(module)
    if args.example_tools:
        load_tool_module("parley.agent.example_tools")
    if args.processes is not None:
        settings.processes = args.processes
    if settings.processes != 1:
        from parley.pool import serve_pool

        # what each media process's command line carries of this one
        child_args = ["--log-level", args.log_level, "--backend", settings.backend]
        child_args += ["--agents", settings.agents_file] if settings.agents_file else []
        modules = [*(args.tools or []), *(["parley.agent.example_tools"] if args.example_tools else [])]
        for module in modules:
            child_args += ["--tools", module]
        asyncio.run(serve_pool(settings, default_registry, child_args))
        return
    from parley.processes import serve

    asyncio.run(serve(settings, default_registry))


def _media_process(args: argparse.Namespace) -> None:
    from parley.pool import run_media_process_command

    run_media_process_command(args)


def _emulator(args: argparse.Namespace) -> None:
    from parley.processes import run_emulator_command

    run_emulator_command(args)


def _token(args: argparse.Namespace) -> None:
    from parley.signaling.access import mint_join_token

    secret = os.environ.get("PARLEY_JOIN_SECRET")
    if not secret:
        raise SystemExit("PARLEY_JOIN_SECRET is not set: it is the secret the server checks tokens with")
    variables = {}
    for pair in args.var or []:
        name, equals, value = pair.partition("=")
        if not equals:
            raise SystemExit(f"--var takes NAME=VALUE, got {pair!r}")
        variables[name] = value
    print(
        mint_join_token(
            secret,
            ttl_s=args.ttl,
            max_seconds=args.max_seconds,
            uses=args.uses,
            subject=args.subject,
            agent=args.agent,
            variables=variables,
        )
    )


def _call(args: argparse.Namespace) -> None:
    from parley.agent.ice import offer_host_addresses
    from parley.caller import run_call

    offer_host_addresses(Settings.from_env().ice_host_addresses)
    try:
        summary = asyncio.run(
            run_call(args.url, args.play, args.record, args.seconds, args.uplink_loss, args.token)
        )
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}), file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(summary, indent=2))


def _agents_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agents", metavar="FILE", help="agent profiles, a TOML file of [agents.NAME] tables (PARLEY_AGENTS)"
    )


def _signaling_arguments(parser: argparse.ArgumentParser) -> None:
    _agents_argument(parser)
    parser.add_argument("--redis", metavar="URL", help="Redis URL (default PARLEY_REDIS_URL)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without PARLEY_JOIN_SECRET (anyone who reaches it can start calls)",
    )


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    _agents_argument(parser)
    parser.add_argument(
        "--agents-only", metavar="NAME,...", help="take calls of these agents only (default: any agent)"
    )
    parser.add_argument("--redis", metavar="URL", help="Redis URL (default PARLEY_REDIS_URL)")
    parser.add_argument("--id", help="worker id (default PARLEY_WORKER_ID, else host-pid)")
    parser.add_argument("--max-calls", type=int, default=None, help=f"calls to take (default {12})")
    parser.add_argument("--backend", choices=["auto", "gemini", "emulator", "loopback"], default=None)
    parser.add_argument("--health-port", type=int, default=None, help="serve /healthz, /readyz, /metrics")
    parser.add_argument("--tools", action="append", metavar="MODULE", help="import MODULE's @tool functions")


def _signaling(args: argparse.Namespace) -> None:
    from parley.processes import run_signaling_command

    run_signaling_command(args)


def _worker(args: argparse.Namespace) -> None:
    from parley.processes import run_worker_command

    run_worker_command(args)


def _db(args: argparse.Namespace) -> None:
    from parley.processes import run_db_command

    run_db_command(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description="Talk to Gemini Live over WebRTC.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="signaling, the web page and an agent worker in one process")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")
    serve.add_argument(
        "--backend",
        choices=["auto", "gemini", "emulator", "loopback"],
        default=None,
        help="auto: Gemini when GEMINI_API_KEY is set, else the offline emulator",
    )
    serve.add_argument(
        "--tools",
        action="append",
        metavar="MODULE",
        help="import MODULE and offer its @tool functions to the model (repeatable)",
    )
    serve.add_argument("--example-tools", action="store_true", help="offer the example tool (current time)")
    _agents_argument(serve)
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without PARLEY_JOIN_SECRET (anyone who reaches it can start calls)",
    )
    serve.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="run the calls in N media processes (0: one per core; default 1, or PARLEY_PROCESSES)",
    )
    serve.set_defaults(run=_serve)
    # `parley serve --processes`' children: not for use by hand
    media = commands.add_parser(
        "media-process", help="internal: one of the media processes of `serve --processes`"
    )
    media.add_argument("--index", type=int, required=True)
    media.add_argument("--socket", required=True)
    media.add_argument("--endings-fd", type=int, default=None)
    media.add_argument("--backend", choices=["auto", "gemini", "emulator", "loopback"], default=None)
    media.add_argument("--agents", default=None)
    media.add_argument("--tools", action="append")
    media.add_argument("--emulator-url", default=None)
    media.add_argument("--emulator-ca", default=None)
    media.set_defaults(run=_media_process)

    emulator = commands.add_parser("emulator", help="the Gemini Live emulator on its own")
    emulator_cli.add_arguments(emulator)
    emulator.set_defaults(run=_emulator)

    token = commands.add_parser("token", help="mint a join token (needs PARLEY_JOIN_SECRET)")
    token.add_argument("--ttl", type=float, default=300, help="seconds the token admits calls (default 300)")
    token.add_argument("--max-seconds", type=float, default=None, help="longest call it admits")
    token.add_argument("--uses", type=int, default=None, help="how many calls it may start")
    token.add_argument("--subject", default=None, help="who it is for (appears in logs)")
    token.add_argument("--agent", default=None, help="the only agent it starts")
    token.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="a variable for the agent (repeatable)"
    )
    token.set_defaults(run=_token)

    call = commands.add_parser("call", help="a headless caller: play a WAV into a call, record the answer")
    call.add_argument("url", help="the Parley server, e.g. http://127.0.0.1:8080")
    call.add_argument("--play", metavar="WAV", help="what to say")
    call.add_argument("--record", metavar="WAV", help="where to write what was heard")
    call.add_argument("--seconds", type=float, default=None, help="call length (default: the WAV plus 6 s)")
    call.add_argument("--uplink-loss", type=float, default=0.0, help="drop this fraction of sent RTP packets")
    call.add_argument("--token", default=os.environ.get("PARLEY_TOKEN"), help="join token (or PARLEY_TOKEN)")
    call.set_defaults(run=_call)

    signaling = commands.add_parser("signaling", help="the HTTP API in front of `parley worker`s, via Redis")
    _signaling_arguments(signaling)
    signaling.set_defaults(run=_signaling)
    worker = commands.add_parser("worker", help="a headless agent worker taking calls through Redis")
    _worker_arguments(worker)
    worker.set_defaults(run=_worker)

    db = commands.add_parser("db", help="the call records database (PARLEY_DATABASE_URL)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="run the migrations (start-up also runs them)")
    upgrade.add_argument("--database-url", default=None, help="instead of PARLEY_DATABASE_URL")
    db.set_defaults(run=_db)

    args = parser.parse_args(argv)
    missing = libopus_missing()
    if missing is not None:
        print(missing, file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aioice", "aiortc", "websockets", "google_genai", "httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.run(args)


if __name__ == "__main__":
    main()
