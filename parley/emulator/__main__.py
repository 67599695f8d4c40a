"""`python -m emulator`: the Gemini Live emulator on its own."""

from __future__ import annotations

import argparse
import logging

from .cli import add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m emulator", description="Offline Gemini Live emulator.")
    parser.add_argument("--log-level", default="INFO")
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(args)


if __name__ == "__main__":
    main()
