"""The agents a process offers, what a call may ask of them, and swapping in a re-read file.

A call names an agent (or gets the default one), from a page on some origin, with variables from the
page and from its join token. `Catalog.admit` says whether that is allowed, with the HTTP status a
refusal gets: 404 for an agent that does not exist, 403 for an origin the agent does not allow, 400 for
a variable the agent does not declare or one over its length limit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.profiles.model import AgentProfile, ProfileFileError, parse_agents

logger = logging.getLogger("parley.profiles")

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_AGENT = "default"


class AdmissionError(Exception):
    """A call the agents do not allow; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Admitted:
    agent: str
    variables: dict[str, str] = field(default_factory=dict)


def render(template: str, variables: Mapping[str, str], declared: Iterable[str]) -> str:
    """`{name}` of each declared variable replaced by its value (empty when the call gave none).

    One pass: a value that itself holds `{other}` stays as it is, and braces that name no declared
    variable (JSON in an instruction, say) are left alone."""
    names = set(declared)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return variables.get(name, "") if name in names else match.group(0)

    return PLACEHOLDER.sub(value, template)


class Catalog:
    """Named agent profiles; immutable (a reload makes a new one)."""

    def __init__(
        self,
        profiles: Mapping[str, AgentProfile],
        default_agent: str = DEFAULT_AGENT,
        source: str | None = None,
    ) -> None:
        self._profiles = dict(profiles)
        self.default_agent = default_agent
        self.source = source  # the file it was read from; None: the environment's one agent

    @classmethod
    def single(cls, profile: AgentProfile | None = None) -> Catalog:
        """No agents file: the one agent `default`, from the process's settings."""
        return cls({DEFAULT_AGENT: profile or AgentProfile()})

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def get(self, name: str) -> AgentProfile:
        """The profile; KeyError for a name the catalog does not have."""
        return self._profiles[name]

    def origins(self) -> set[str]:
        """Every origin some agent allows (the API answers those origins' preflights)."""
        return {o for p in self._profiles.values() for o in (p.allowed_origins or [])}

    def admit(
        self,
        agent: str | None,
        origin: str | None,
        server_origins: Iterable[str],
        variables: Mapping[str, Any],
    ) -> Admitted:
        """May a call start `agent` (None: the default) from `origin` (None: same origin, or no
        browser) with these variables? AdmissionError says why not."""
        name = self.default_agent if agent is None else agent
        profile = self._profiles.get(name)
        if profile is None:
            raise AdmissionError(404, f"no agent named {name!r}")
        if origin is not None:
            allowed = profile.allowed_origins
            if allowed is None:
                allowed = [o.strip().rstrip("/").lower() for o in server_origins]
            if origin.rstrip("/").lower() not in allowed and "*" not in allowed:
                raise AdmissionError(403, f"{origin} may not start the agent {name!r}")
        checked: dict[str, str] = {}
        for key, value in variables.items():
            limit = profile.variables.get(key)
            if limit is None:
                raise AdmissionError(400, f"the agent {name!r} takes no variable {key!r}"[:300])
            if not isinstance(value, str):
                raise AdmissionError(400, f"the variable {key!r} must be a string")
            if len(value) > limit:
                raise AdmissionError(400, f"the variable {key!r} is longer than {limit} characters")
            checked[key] = value
        return Admitted(name, checked)


class ProfileStore:
    """The catalog in force. `reload()` re-reads the file; a broken file is refused and the old stays.

    Calls keep the profile they started with: they were made from the catalog of their start."""

    def __init__(
        self, catalog: Catalog, path: str | None = None, check: Callable[[Catalog], None] | None = None
    ) -> None:
        self.catalog = catalog
        self.path = path
        self._check = check  # more than the schema can see (the tools a process registered)
        self.reloads = 0
        self.refusals = 0

    @classmethod
    def open(
        cls,
        path: str | None,
        default: AgentProfile | None = None,
        check: Callable[[Catalog], None] | None = None,
    ) -> ProfileStore:
        """The agents file at `path` (ProfileFileError when it is broken), or the one default agent."""
        catalog = load_catalog(path) if path else Catalog.single(default)
        if check is not None:
            check(catalog)
        return cls(catalog, path, check)

    def reload(self) -> bool:
        if not self.path:
            logger.warning("SIGHUP: no agents file to reload (--agents / PARLEY_AGENTS)")
            return False
        try:
            catalog = load_catalog(self.path)
            if self._check is not None:
                self._check(catalog)
        except ProfileFileError as exc:
            self.refusals += 1
            names = ", ".join(self.catalog.names())
            logger.error("agents file refused, keeping the agents in force (%s): %s", names, exc)
            return False
        self.catalog = catalog
        self.reloads += 1
        logger.warning("agents file %s reloaded: %s", self.path, ", ".join(catalog.names()))
        return True


def load_catalog(path: str | Path) -> Catalog:
    """The catalog of the agents file at `path`; ProfileFileError when it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileFileError(f"{path}: cannot be read: {exc}") from None
    parsed = parse_agents(text, str(path))
    return Catalog(parsed.agents, parsed.default_agent or DEFAULT_AGENT, source=str(path))
