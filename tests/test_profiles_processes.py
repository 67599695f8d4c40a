"""Agent profiles across processes: a fleet dispatching per agent (real Redis, worker subprocesses), and
`parley serve` re-reading its agents file on SIGHUP (a real process, a real signal)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.emulator.server import GeminiEmulator
from tests.test_fleet import ROOT, Fleet, RedisServer, free_port, redis_server
from tests.test_profiles import post
from tests.waiting import interrupt, wait_until

__all__ = ["redis_server"]  # the fixture, used by name

AGENTS = """
[agents.support]
system_instruction = "Support speaking{suffix}."
variables = ["suffix"]

[agents.sales]
system_instruction = "Sales speaking."
"""


@pytest.fixture
async def agents_fleet(
    redis_server: RedisServer, emulator: GeminiEmulator, tmp_path: Path
) -> AsyncIterator[tuple[Fleet, Path]]:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    fleet = Fleet(redis_server, emulator, tmp_path)
    await fleet.start_signaling(agents_file=str(agents))
    try:
        yield fleet, agents
    finally:
        await fleet.close()


def opened(emulator: GeminiEmulator, before: int) -> bool:
    """A connection beyond the first `before` has sent its setup."""
    return len(emulator.connections) > before and emulator.connections[-1].setup is not None


def instruction(setup: dict[str, Any] | None) -> str:
    assert setup is not None
    content = setup.get("systemInstruction") or setup.get("system_instruction") or {}
    return "".join(part.get("text", "") for part in content.get("parts", []))


async def test_a_fleet_dispatches_per_agent(
    agents_fleet: tuple[Fleet, Path], emulator: GeminiEmulator
) -> None:
    fleet, agents = agents_fleet
    env = {"PARLEY_AGENTS": str(agents)}
    await fleet.start_workers("w-support", args=("--agents-only", "support"), extra_env=env)
    await fleet.start_workers("w-sales", args=("--agents-only", "sales"), extra_env=env)
    for _ in range(2):  # the least loaded worker would take every other call: the agent decides instead
        for agent, worker in (("sales", "w-sales"), ("support", "w-support")):
            count = len(emulator.connections)
            # variables cross Redis to the worker, which fills them in
            variables = {"suffix": " to you"} if agent == "support" else {}
            caller = await fleet.call(agent=agent, variables=variables)
            state = await fleet.state(caller)
            assert (state["agent"], state["worker"]) == (agent, worker)
            await wait_until(functools.partial(opened, emulator, count), 15, "the setup")
            said = "Support speaking to you." if agent == "support" else "Sales speaking."
            assert instruction(emulator.connections[-1].setup) == said
            await caller.hang_up()
    assert fleet.host.workers["w-sales"].agents == frozenset({"sales"})
    # signaling knows the names itself: an unknown agent is refused without asking any worker
    status, body = await post_offer(fleet.url, "?agent=nobody")
    assert status == 404 and "nobody" in body["error"]
    status, body = await post(fleet.url, {"agent": "sales", "variables": {"suffix": "x"}})
    assert status == 400 and "'suffix'" in body["error"]


async def test_a_worker_refuses_to_serve_agents_its_file_does_not_have(tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "parley.cli", "worker", "--redis", "redis://127.0.0.1:9/0", "--backend"),
        *("loopback", "--agents", str(agents), "--agents-only", "sales,billing"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert b"--agents-only names agents the agents file does not have: billing" in output


async def post_offer(url: str, query: str) -> tuple[int, dict[str, Any]]:
    return await post(url, query=query)


@pytest.mark.parametrize("processes", [1, 2])
async def test_sighup_reloads_the_agents_file_and_refuses_a_broken_one(
    tmp_path: Path, processes: int
) -> None:
    """With `--processes 2` the front door and both media processes re-read it (a call of the new agent
    is admitted at the front door and planned in a media process)."""
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    port = free_port()
    log_path = tmp_path / "serve.log"
    unset = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "PARLEY_AGENTS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PARLEY_ICE_HOST_ADDRESSES"] = "127.0.0.1"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "parley.cli", "serve", "--port", str(port), "--backend", "emulator"),
            *("--agents", str(agents), "--processes", str(processes)),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def logged(text: str, times: int = 1) -> bool:
        return log_path.read_text(errors="replace").count(text) >= times

    try:
        await wait_until(lambda: logged("parley listening"), 40, "the server to start")
        assert (await post_offer(url, "?agent=sales"))[0] == 201
        assert (await post_offer(url, "?agent=billing"))[0] == 404

        agents.write_text(AGENTS + "\n[agents.billing]\nvoice = 7\n")  # broken: a number for a voice
        proc.send_signal(signal.SIGHUP)
        every = processes + (processes > 1)  # with media processes, the front door's own too
        await wait_until(lambda: logged("agents file refused", every), 20, "the refusals in the log")
        assert logged("agent 'billing', key 'voice'")
        assert (await post_offer(url, "?agent=sales"))[0] == 201  # the old profiles stay
        assert (await post_offer(url, "?agent=billing"))[0] == 404

        agents.write_text(AGENTS + "\n[agents.billing]\nvoice = 'Puck'\n")
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: logged("reloaded: billing, sales, support", every), 20, "the reloads")
        assert (await post_offer(url, "?agent=billing"))[0] == 201
        assert proc.returncode is None  # SIGHUP reloads, it does not stop the server
    finally:
        await interrupt(proc)
