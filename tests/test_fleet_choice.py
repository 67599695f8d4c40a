"""Which worker gets a call, and when a worker says it is too loaded to take one (no Redis needed)."""

from __future__ import annotations

from typing import Any

from parley.agent.call import CallOptions
from parley.agent.loopback import loopback_sessions
from parley.agent.worker import Worker, single_agent
from parley.fleet.host import RedisCallHost, WorkerView
from parley.fleet.options import FleetOptions
from parley.fleet.rpc_server import FleetWorker


def view(worker_id: str, **fields: Any) -> WorkerView:
    defaults = {
        "capacity": "10",
        "active": "0",
        "accepting": "1",
        "state": "ready",
        "instance": "a",
        "version": "1",
    }
    w = WorkerView(worker_id)
    w.update({**defaults, **{k: str(v) for k, v in fields.items()}})
    return w


def test_the_least_filled_worker_that_takes_calls_comes_first() -> None:
    host = RedisCallHost(FleetOptions(redis_url="redis://127.0.0.1:1/0"))
    host.workers = {
        "busy": view("busy", active=8),
        "big": view("big", capacity=40, active=8),  # 20% full beats 40% full
        "half": view("half", active=4),
        "full": view("full", active=10, accepting=0),
        "draining": view("draining", state="draining", accepting=0),
    }
    assert [w.id for w in host.candidates()] == ["big", "half", "busy"]
    host.workers["half"].inflight = 5  # offers on their way count as load
    assert [w.id for w in host.candidates()] == ["big", "busy", "half"]
    # a worker that did not answer is skipped until it heartbeats again
    host.workers["big"].suspect_until_version = host.workers["big"].version
    assert host.candidates()[0].id == "busy"
    host.workers["big"].update(
        {"capacity": "40", "active": "8", "accepting": "1", "instance": "a", "version": "2"}
    )
    assert host.candidates()[0].id == "big"


def test_a_reply_newer_than_the_heartbeat_wins_and_a_restart_starts_over() -> None:
    w = view("w", active=1, version=5)
    w.note_load({"instance": "a", "version": 7, "active": 2, "accepting": True})
    beat = {"capacity": "10", "active": "1", "accepting": "1", "instance": "a", "version": "6"}
    w.update(beat)  # a heartbeat older than the reply
    assert w.active == 2
    w.update({**beat, "active": "0", "version": "8"})
    assert w.active == 0
    w.note_load({"instance": "old", "version": 99, "active": 5, "accepting": True})  # another process's
    assert w.active == 0
    # the worker restarted under the same id: its versions count from 1 again
    w.update({**beat, "instance": "b", "active": "3", "version": "1"})
    assert w.active == 3 and w.version == 1


def test_a_worker_over_its_limits_takes_no_calls() -> None:
    options = FleetOptions(redis_url="redis://127.0.0.1:1/0", worker_max_lag_ms=100, worker_max_cpu=0.9)
    worker = Worker(single_agent(loopback_sessions()), CallOptions(), max_calls=4)
    fleet = FleetWorker(worker, options, "w")
    assert fleet.over_limits() is None and fleet.load_ratio() == 0
    fleet.monitor.lag_ms = 150
    assert "lag" in (fleet.over_limits() or "")
    assert fleet.load_ratio() == 1.5
    fleet.monitor.lag_ms = 0
    fleet.monitor.cpu = 0.95
    assert "CPU" in (fleet.over_limits() or "")
    fleet.monitor.cpu = 0.1
    worker.accepting = False
    assert fleet.over_limits() == "draining"
    assert fleet.registration()["accepting"] == "0"
