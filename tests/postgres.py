"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, pg_ctl on a loopback port.

PostgreSQL refuses to run as root, so as root the cluster is made and run by the `postgres` user that
Debian's package creates. `make test` installs the package (TEST_PACKAGES in the Makefile).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"{name} not found: install Debian's postgresql (make test does)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "parley", "--auth=trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://parley@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "log")
        pg_ctl = _binary("pg_ctl")
        self._run(pg_ctl, "start", "-w", "-t", "60", "-D", str(self.data), "-o", options, "-l", log)

    def stop(self) -> None:
        """Stopped hard, as a crashed or unplugged server: open connections just break."""
        self._run(_binary("pg_ctl"), "stop", "-w", "-t", "60", "-m", "immediate", "-D", str(self.data))

    def close(self) -> None:
        subprocess.run(
            [*self._as, _binary("pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
