"""The installed wheel works on its own: the page and widget inside it, `python -m parley`, libopus errors.

One wheel is built (`pip wheel --no-deps`, as `pip install .` would) from a copy of the source, installed
into a scratch venv, and run from a directory with no `web/` in it. The scratch venv takes its
dependencies from the test's own environment through a `.pth` line (the same packages `pip install`
would fetch, without the network); the project itself comes only from the wheel.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import parley

REPO = Path(__file__).resolve().parent.parent
LIBOPUS_LINE = "libopus is not installed: apt-get install libopus0"


class Install:
    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.bin = root / "venv" / "bin"
        self.python = self.bin / "python"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "GEMINI_", "GOOGLE_"))}
        env.pop("PYTHONPATH", None)
        return env | extra

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=self.root, env=self.env(**env), capture_output=True, text=True, timeout=60
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "parley", source / "parley", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(source)], check=True, timeout=120
    )
    (wheel,) = (root / "dist").glob("parley-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    install = Install(root, wheel)
    purelib = subprocess.run(
        [str(install.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from this environment; a .pth line adds the directory without running its .pth files,
    # so the editable install of the working tree stays out.
    Path(purelib, "deps-from-test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [*pip, "--python", str(install.python), "install", "--no-deps", str(wheel)], check=True, timeout=120
    )
    shutil.rmtree(source)
    yield install


def test_the_wheel_installs_only_the_parley_package(installed: Install) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"parley", f"parley-{parley.__version__}.dist-info"}
    web = Path(parley.__file__).parent / "web"
    assets = [p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file()]
    assert "client/signaling.js" in assets  # the modules in web/'s subfolders are package data too
    for asset in assets:
        assert f"parley/web/{asset}" in names
    migrations = "parley/records/migrations"
    assert {f"{migrations}/env.py", f"{migrations}/versions/0001_calls.py"} <= set(names)
    where = installed.run(str(installed.python), "-c", "import parley; print(parley.__file__)")
    assert where.stdout.strip().startswith(str(installed.root / "venv")), where


def test_python_m_parley_prints_the_version(installed: Install) -> None:
    for command in ([str(installed.python), "-m", "parley"], [str(installed.bin / "parley")]):
        result = installed.run(*command, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"parley {parley.__version__}"


async def test_the_installed_server_serves_the_page_and_the_widget(installed: Install) -> None:
    process = await asyncio.create_subprocess_exec(
        str(installed.bin / "parley"),
        "serve",
        "--port",
        "0",
        "--backend",
        "loopback",
        cwd=installed.root,  # no web/ here: the assets must come from the package
        env=installed.env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        url = None
        deadline = time.monotonic() + 45
        while url is None:
            line = await asyncio.wait_for(process.stderr.readline(), max(0.1, deadline - time.monotonic()))
            assert line, "parley serve exited before listening"
            found = re.search(rb"listening on (http://[\d.]+:\d+)", line)
            url = found.group(1).decode() if found else None
        async with aiohttp.ClientSession() as http:
            for path, asset, kind in (
                ("/", "index.html", "text/html"),
                ("/widget.js", "widget.js", "javascript"),
            ):
                async with http.get(url + path) as response:
                    assert response.status == 200, path
                    assert kind in response.headers["Content-Type"]
                    assert await response.read() == (REPO / "parley" / "web" / asset).read_bytes()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # Call records need no set-up: the default database was made, and migrated from the wheel's own files.
    assert (installed.root / "parley.db").stat().st_size > 0


COMMANDS = [
    ["serve"],
    ["emulator"],
    ["token"],
    ["call", "http://127.0.0.1:9"],
    ["signaling", "--redis", "redis://127.0.0.1:9"],
    ["worker", "--redis", "redis://127.0.0.1:9"],
]


def test_a_missing_libopus_is_one_line_and_status_2_from_every_command(
    installed: Install, tmp_path: Path
) -> None:
    # The library is present on this machine: make ctypes unable to find it, as on one without libopus0.
    (tmp_path / "sitecustomize.py").write_text(
        "import ctypes.util\n"
        "_find = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda name: None if name == 'opus' else _find(name)\n"
    )
    for command in COMMANDS:
        for launcher in ([str(installed.bin / "parley")], [str(installed.python), "-m", "parley"]):
            result = installed.run(*launcher, *command, PYTHONPATH=str(tmp_path))
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr == LIBOPUS_LINE + "\n", (command, result.stderr)
