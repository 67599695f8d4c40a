"""Agent profiles made into calls: each call's `SessionConfig` from its agent's profile, the process's
settings filling whatever the profile leaves out (part of the composition root).

Without an agents file the environment forms the one agent `default`, exactly as before profiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from parley.agent.live_config import ActivityDetection, SessionConfig
from parley.agent.session import SessionFactory
from parley.agent.tools import CallContext, ToolRegistry
from parley.agent.worker import CallPlan, CallPlanner, UnknownAgent
from parley.profiles import AgentProfile, Catalog, ProfileFileError, ProfileStore, render
from parley.settings import Settings


def tools_check(tools: ToolRegistry) -> Callable[[Catalog], None]:
    """Refuses a catalog whose agents name tools that no `--tools` module registered."""
    registered = set(tools.names())

    def check(catalog: Catalog) -> None:
        for name in catalog.names():
            wanted = catalog.get(name).tools or []
            missing = [tool for tool in wanted if tool not in registered]
            if missing:
                raise ProfileFileError(
                    f"{catalog.source}: agent {name!r}, key 'tools': no tool named "
                    f"{', '.join(map(repr, missing))} is registered (registered: "
                    f"{', '.join(sorted(registered)) or 'none'}; load modules with --tools)"
                )

    return check


def open_profiles(settings: Settings, tools: ToolRegistry | None = None) -> ProfileStore:
    """The agents file the settings name (checked against the registered tools), or the one default
    agent. A broken file stops the process with the message that says where."""
    try:
        check = tools_check(tools) if tools is not None else None
        return ProfileStore.open(settings.agents_file, check=check)
    except ProfileFileError as exc:
        raise SystemExit(f"agents file refused: {exc}") from None


def session_config_for(
    base: SessionConfig,
    profile: AgentProfile,
    tools: ToolRegistry,
    context: CallContext,
) -> SessionConfig:
    """One call's conversation: the profile over the process's configuration, variables filled in."""
    declared = profile.variables
    variables = context.variables
    instruction = profile.system_instruction
    if instruction is None:
        instruction = base.system_instruction
    return dataclasses.replace(
        base,
        model=profile.model or base.model,
        voice=profile.voice or base.voice,
        system_instruction=render(instruction, variables, declared),
        greeting=render(profile.greeting, variables, declared) if profile.greeting else None,
        language=profile.language or base.language,
        tools=tools if profile.tools is None else tools.subset(profile.tools),
        google_search=profile.google_search,
        temperature=profile.temperature,
        context_compression=(
            base.context_compression if profile.context_compression is None else profile.context_compression
        ),
        media_resolution=profile.media_resolution or base.media_resolution,
        activity=ActivityDetection(
            start_sensitivity=profile.start_sensitivity,
            end_sensitivity=profile.end_sensitivity,
            prefix_padding_ms=profile.prefix_padding_ms,
            silence_duration_ms=profile.silence_duration_ms,
        ),
        context=context,
    )


def call_planner(
    profiles: ProfileStore,
    base: SessionConfig,
    tools: ToolRegistry,
    sessions: Callable[[SessionConfig], SessionFactory],
) -> CallPlanner:
    """The worker's plans: the profile in force when the call starts (a reload leaves running calls
    as they are), through `sessions` (Gemini, or the loopback echo that ignores it)."""

    def plan(call_id: str, agent: str | None, variables: Mapping[str, str]) -> CallPlan:
        catalog = profiles.catalog
        name = catalog.default_agent if agent is None else agent
        if name not in catalog:
            raise UnknownAgent(name)
        profile = catalog.get(name)
        context = CallContext(call_id=call_id, agent=name, variables=dict(variables))
        config = session_config_for(base, profile, tools, context)
        return CallPlan(name, sessions(config), profile.max_call_seconds, profile.video, config.model)

    return plan
