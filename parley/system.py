"""What the machine must provide beyond Python packages, checked before anything needs it."""

from __future__ import annotations

import ctypes.util
import sys

INSTALL_HINTS = {
    "linux": "apt-get install libopus0",
    "darwin": "brew install opus",
    "win32": "install the Opus codec library (opus.dll) on PATH",
}


def libopus_missing() -> str | None:
    """The one-line complaint when the system Opus library (which opuslib loads with ctypes) is absent."""
    if ctypes.util.find_library("opus"):
        return None
    hint = INSTALL_HINTS.get(sys.platform, "install the Opus codec library (libopus)")
    return f"libopus is not installed: {hint}"
