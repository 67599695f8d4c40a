"""The warm-up leaves nothing for a call to build: what the first call builds, it builds on the shared
event loop, stalling every other call of the process."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter (models, once built, stay built): with or without the warm-up, make every
# SDK object a call makes (each setup option on, a tool, its answer, an audio chunk) and print the
# models that had to be built for it.
CALL_SETUP = """
import json, sys
import pydantic
from google.genai import types
from pydantic._internal._mock_val_ser import MockValSer
from parley.agent.gemini_setup import connect_config
from parley.agent.live_config import ActivityDetection, SessionConfig
from parley.agent.tools import ToolRegistry
from parley.agent.warmup import build_sdk_models

if sys.argv[1] == "warm":
    build_sdk_models()
models = [m for m in vars(types).values() if isinstance(m, type) and issubclass(m, pydantic.BaseModel)]
unbuilt = {m for m in models if isinstance(m.__dict__.get("__pydantic_validator__"), MockValSer)}

tools = ToolRegistry()
def lookup_order(order_id: str, verbose: bool = False) -> dict:
    "Look up an order."
    return {}
tools.register()(lookup_order)
activity = ActivityDetection(start_sensitivity="high", end_sensitivity="low", silence_duration_ms=300)
for family in ("3.x", "2.5"):
    config = SessionConfig(
        rules=family, system_instruction="Be brief.", media_resolution="low", tools=tools,
        language="en-US", google_search=True, temperature=0.5, activity=activity,
        thinking_budget=0 if family == "2.5" else None, proactive_audio=True if family == "2.5" else None,
    )
    connect_config(config, "a-handle", seeding=True)
when_idle = types.FunctionResponseScheduling.WHEN_IDLE
types.FunctionResponse(id="1", name="lookup_order", response={}, scheduling=when_idle)
types.Blob(data=b"audio", mime_type="audio/pcm;rate=16000")
still = {m for m in unbuilt if isinstance(m.__dict__.get("__pydantic_validator__"), MockValSer)}
print(json.dumps(sorted(m.__name__ for m in unbuilt - still)))
"""


def models_built_by_a_call(warm: bool) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", CALL_SETUP, "warm" if warm else "cold"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(run.stdout))


def test_after_the_warm_up_a_call_builds_no_sdk_model() -> None:
    # without the warm-up the call builds the models it makes (so the check sees them)...
    assert {"LiveConnectConfig", "SessionResumptionConfig", "FunctionResponse"} <= set(
        models_built_by_a_call(warm=False)
    )
    # ...and after it, none: a model's validator is its own, so the ones held by another are built too
    assert models_built_by_a_call(warm=True) == []
