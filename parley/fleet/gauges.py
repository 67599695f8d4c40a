"""Gauges read at each scrape, in the Prometheus text format (prometheus_client writes it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# name -> (value, help)
Gauges = dict[str, tuple[float, str]]


class _GaugeCollector(Collector):
    """Gauges read at each scrape, all with the same labels."""

    def __init__(self, read: Callable[[], Gauges], labels: dict[str, str]) -> None:
        self.read = read
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for name, (value, help_text) in self.read().items():
            family = GaugeMetricFamily(name, help_text, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), value)
            yield family


def gauge_registry(read: Callable[[], Gauges], labels: dict[str, str] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GaugeCollector(read, labels or {}))
    return registry
