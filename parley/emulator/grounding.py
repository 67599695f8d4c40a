"""Grounding with Google Search, emulated: a setup whose tools hold `googleSearch` gets answers that
carry `groundingMetadata` (the searches "made" and web sources), as the service sends with a grounded
turn. The sources are made up and point nowhere real (`.invalid`), so nothing can be fetched."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .protocol import has


def wants_search(tools: Any) -> bool:
    """True when the setup's tools ask for Google Search (either spelling, or the older retrieval)."""
    if not isinstance(tools, list):
        return False
    return any(has(tool, "google_search") or has(tool, "google_search_retrieval") for tool in tools)


def grounding_metadata(query: str) -> dict[str, Any]:
    """What a grounded reply to `query` carries: the search, two sources and the search widget."""
    uri = f"https://search.emulator.invalid/?q={quote(query[:200])}"
    title = query[:60]
    chunks = [
        {"web": {"uri": f"{uri}&result={n}", "title": f"Result {n}: {title}", "domain": "emulator.invalid"}}
        for n in (1, 2)
    ]
    return {
        "webSearchQueries": [query],
        "groundingChunks": chunks,
        "searchEntryPoint": {"renderedContent": f'<a href="{uri}">{query[:60]}</a>'},
    }
