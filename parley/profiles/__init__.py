"""Agent profiles: named agents (`[agents.NAME]` tables of a TOML file), validated, chosen per call.

`model.py` is the file's schema (pydantic: every key typed, unknown keys refused), `catalog.py` the
profiles a process holds (with what a call may ask of them: an allowed origin, declared variables) and
`ProfileStore`, which swaps in a re-read file on SIGHUP or keeps the old one when the new one is broken.
This room imports nothing else of Parley: the root turns a profile into a session's configuration, and
signaling and the fleet look names up here.
"""

from parley.profiles.catalog import AdmissionError, Catalog, ProfileStore, load_catalog, render
from parley.profiles.model import AgentProfile, ProfileFileError

__all__ = [
    "AdmissionError",
    "AgentProfile",
    "Catalog",
    "ProfileFileError",
    "ProfileStore",
    "load_catalog",
    "render",
]
