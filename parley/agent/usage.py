"""What Gemini's messages say beside the audio: tokens by modality, and the sources of a grounded answer."""

from __future__ import annotations

from google.genai import types

from parley.agent.session import SessionStats


def count_usage(stats: SessionStats, usage: types.UsageMetadata) -> None:
    """One message's usageMetadata, summed into the session's stats."""
    stats.prompt_tokens += usage.prompt_token_count or 0
    stats.response_tokens += usage.response_token_count or 0
    stats.total_tokens += usage.total_token_count or 0
    for detail in usage.prompt_tokens_details or []:
        if detail.modality in (types.MediaModality.VIDEO, types.MediaModality.IMAGE):
            stats.video_tokens_reported += detail.token_count or 0
    add_modalities(stats.input_tokens, usage.prompt_tokens_details)
    add_modalities(stats.output_tokens, usage.response_tokens_details)


def add_modalities(totals: dict[str, int], details: list[types.ModalityTokenCount] | None) -> None:
    for detail in details or []:
        if detail.modality is not None:
            name = str(getattr(detail.modality, "value", detail.modality))
            totals[name] = totals.get(name, 0) + (detail.token_count or 0)


def grounding_sources(metadata: types.GroundingMetadata) -> list[dict[str, str]]:
    """The web pages (and other sources) an answer was grounded on: uri and title."""
    sources = []
    for chunk in metadata.grounding_chunks or []:
        source = chunk.web or chunk.retrieved_context
        if source is not None and (source.uri or source.title):
            sources.append({"uri": source.uri or "", "title": source.title or ""})
    return sources
