"""Prometheus texts from several processes as one exposition (`serve --processes`' `GET /metrics`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def one_exposition(texts: dict[str, str]) -> bytes:
    """`texts`: each process's name and its metrics; each family once, each sample labelled `process`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Relabelled(texts))
    return generate_latest(registry)


class _Relabelled(Collector):
    """Prometheus texts from several processes as one exposition: each family once, each of its samples
    with a `process` label saying where it came from."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for process, text in self.texts.items():
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    labels = {**sample.labels, "process": process}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
        yield from families.values()
