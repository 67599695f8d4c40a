"""The agents file (`--agents FILE`, `PARLEY_AGENTS`): its schema and its loading.

    default_agent = "support"        # the agent a call gets when it names none (else the agent
                                     # named `default`, else the file's first)

    [agents.support]
    voice = "Puck"
    system_instruction = "You help {customer_name} with order {order_id}."
    greeting = "Hello {customer_name}, how can I help?"
    variables = ["customer_name", "order_id"]   # or a table of name = length limit
    tools = ["lookup_order"]
    allowed_origins = ["https://shop.example"]

Every key is typed and checked by pydantic; an unknown key, a wrong type or a value out of range is
an error that names the file, the agent and the key. A key left out takes the process's setting (the
environment), so a file that only names agents changes nothing else.
"""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# A variable declared by name only may be this long (characters).
DEFAULT_VARIABLE_LIMIT = 200
MAX_VARIABLE_LIMIT = 10000

Sensitivity = Literal["high", "low"]


class ProfileFileError(ValueError):
    """The agents file cannot be used; the message names the file, the agent and the key."""


class AgentProfile(BaseModel):
    """One agent. None means: what the process's settings say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    voice: str | None = None
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    system_instruction: str | None = None
    greeting: str | None = None
    # Names of registered tools (`--tools` modules); None: every registered tool, [] none.
    tools: list[str] | None = None
    google_search: bool = False
    # Gemini's automatic activity detection (None: the service's defaults).
    start_sensitivity: Sensitivity | None = None
    end_sensitivity: Sensitivity | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0, le=10000)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=0, le=10000)] | None = None
    context_compression: bool | None = None
    max_call_seconds: Annotated[float, Field(gt=0)] | None = None
    video: bool = True
    media_resolution: Literal["LOW", "MEDIUM", "HIGH"] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    # Sites that may start this agent from a browser; None: the server's PARLEY_ALLOWED_ORIGINS.
    allowed_origins: list[str] | None = None
    # name -> the longest value accepted (characters); a plain list gets DEFAULT_VARIABLE_LIMIT each.
    variables: dict[str, Annotated[int, Field(ge=1, le=MAX_VARIABLE_LIMIT)]] = Field(default_factory=dict)

    @field_validator("variables", mode="before")
    @classmethod
    def _variables_by_name(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(name, str) for name in value):
                raise ValueError("a list of variable names, or a table of name = length limit")
            return {name: DEFAULT_VARIABLE_LIMIT for name in value}
        return value

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not VARIABLE.fullmatch(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits and _)")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        origins = [origin.strip().rstrip("/").lower() for origin in value]
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], or *)")
        return origins

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a tool is named twice")
        return value


class AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_agent: str | None = None
    agents: dict[str, AgentProfile] = Field(min_length=1)

    @field_validator("agents")
    @classmethod
    def _names(cls, value: dict[str, AgentProfile]) -> dict[str, AgentProfile]:
        for name in value:
            if not NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an agent name (letters, digits, _ and -, up to 64)")
        return value


def _where(location: tuple[int | str, ...]) -> str:
    if len(location) >= 2 and location[0] == "agents":
        agent, keys = location[1], location[2:]
        if not keys:
            return f"agent {agent!r}"
        return f"agent {agent!r}, key {'.'.join(str(k) for k in keys)!r}"
    if location:
        return f"key {'.'.join(str(k) for k in location)!r}"
    return "the file"


def parse_agents(text: str, source: str) -> AgentsFile:
    """The agents file's text, checked; ProfileFileError says what is wrong and where."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        parsed = AgentsFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {_where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ProfileFileError("; ".join(problems)) from None
    name = parsed.default_agent
    if name is None:
        parsed.default_agent = "default" if "default" in parsed.agents else next(iter(parsed.agents))
    elif name not in parsed.agents:
        raise ProfileFileError(f"{source}: key 'default_agent': {name!r} is not an agent of the file")
    return parsed
