"""What differs between Live model families, as one object per family.

The emulator behaves like the model a setup names: `models/gemini-3...` gets the 3.x rules, any other
model the 2.5 ones; `EmulatorOptions.rules` ("2.5" or "3.x", `parley emulator --rules`) overrides the
choice, and each rule can be switched on or off by its own option (None: as the family says). Every
rule, where it was reported and the option that reproduces it: docs/gemini-3x-rules.md. When the real
service changes, the change is one field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .protocol import CLOSE_INVALID_ARGUMENT, ProtocolError, pick, pick_path

FAMILIES = ("2.5", "3.x")


@dataclass(frozen=True)
class ModelRules:
    family: str
    # clientContent only as initial history: setup must carry historyConfig.initialHistoryInClientContent,
    # it must come before any realtime input and end with turnComplete true; anything else is 1007.
    history_only_client_content: bool
    # Resuming a handle while the connection it came from is still open fails with 1011 after setupComplete.
    refuse_concurrent_resume: bool
    # audioStreamEnd and digital zeros do not end the user's turn: only trailing real (quiet) audio does.
    trailing_audio_required: bool
    # Function calls are NON_BLOCKING unless declared BLOCKING; responses may carry `scheduling`.
    non_blocking_tools: bool
    # A serverContent carrying nothing but usageMetadata comes before the reply's audio.
    usage_only_content: bool
    # proactivity.proactiveAudio=false, thinkingConfig and (on the Developer API) affective dialog are 1007.
    refuse_setup_fields: bool
    goaway_lead_s: float  # goAway this long before the connection's end


RULES: dict[str, ModelRules] = {
    "2.5": ModelRules(
        family="2.5",
        history_only_client_content=False,
        refuse_concurrent_resume=False,
        trailing_audio_required=False,
        non_blocking_tools=False,
        usage_only_content=False,
        refuse_setup_fields=False,
        goaway_lead_s=50.0,
    ),
    "3.x": ModelRules(
        family="3.x",
        history_only_client_content=True,
        refuse_concurrent_resume=True,
        trailing_audio_required=True,
        non_blocking_tools=True,
        usage_only_content=True,
        refuse_setup_fields=True,
        goaway_lead_s=60.0,
    ),
}

# The EmulatorOptions fields that switch one rule on or off (None: as the family says).
RULE_OPTIONS = (
    "history_only_client_content",
    "refuse_concurrent_resume",
    "trailing_audio_required",
    "non_blocking_tools",
    "usage_only_content",
    "refuse_setup_fields",
)


def family_of(model: str) -> str:
    """ "models/gemini-3.8-live" and "projects/p/.../models/gemini-3.1-..." are 3.x; the rest 2.5."""
    name = model.rsplit("/", 1)[-1]
    return "3.x" if name.startswith("gemini-3") else "2.5"


def rules_for(model: str, options: Any) -> ModelRules:
    """The family's rules for `model`, with the options' overrides on top."""
    family = getattr(options, "rules", None) or family_of(model)
    if family not in RULES:
        raise ValueError(f"unknown rule set {family!r}: expected one of {', '.join(FAMILIES)}")
    overrides = {
        name: getattr(options, name) for name in RULE_OPTIONS if getattr(options, name, None) is not None
    }
    return dataclasses.replace(RULES[family], **overrides)


def check_setup(setup: dict[str, Any], rules: ModelRules, endpoint: str, model: str) -> None:
    """Refuse the setup fields the family does not take, naming them as the service does."""
    if not rules.refuse_setup_fields:
        return
    if pick_path(setup, "proactivity", "proactive_audio") is False:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT,
            f"Invalid argument: proactivity.proactive_audio cannot be disabled for {model}.",
        )
    generation = pick(setup, "generation_config")
    if pick(generation, "thinking_config") is not None:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid argument: thinking_config is not supported for {model}."
        )
    affective = pick(generation, "enable_affective_dialog", pick(setup, "enable_affective_dialog"))
    if affective is not None and endpoint != "vertex":
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid argument: enable_affective_dialog is not supported for {model}."
        )
