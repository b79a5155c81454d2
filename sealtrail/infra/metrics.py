"""Prometheus metrics built from what a service counts anyway, read when scraped.

A service's hot loop already keeps plain counters (its ``*Stats`` dataclass). Instead of a
``Counter.inc()`` per record, :class:`StatsCounters` reads those fields at scrape time, so
exposing them costs the loop nothing. :class:`NewestCheckpoints` holds the newest checkpoint
per chain and reports its age (seconds since its timestamp) when scraped. :func:`exposed_names`
lists the series names a registry can emit (for the dashboard test and the docs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "NewestCheckpoints",
    "StatsCounters",
    "exposed_names",
    "new_registry",
]

# Batch sizes in records: from a trickle to the largest batches the options allow.
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
# Transaction and insert durations, from a quick commit to a stalled broker or store.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def new_registry(component: str) -> CollectorRegistry:
    """A registry of its own for ``component``, with the process's CPU, memory and open files
    as ``sealtrail_<component>_process_*`` (distinct names, so several components can be
    served on one page)."""
    registry = CollectorRegistry()
    ProcessCollector(namespace=f"sealtrail_{component}", registry=registry)
    return registry


class StatsCounters(Collector):
    """Counters read from a stats object's fields when scraped.

    ``fields`` maps a field name to (metric name without ``_total``, help text).
    """

    def __init__(self, stats: object, fields: Mapping[str, tuple[str, str]]) -> None:
        self._stats = stats
        self._fields = dict(fields)

    def collect(self) -> Iterator[Metric]:
        for field_name, (name, help_text) in self._fields.items():
            yield CounterMetricFamily(name, help_text, value=getattr(self._stats, field_name))


@dataclass(frozen=True, slots=True)
class CheckpointSeen:
    """The newest checkpoint of one chain: its tree size and timestamp."""

    size: int
    timestamp_us: int


class NewestCheckpoints(Collector):
    """Per chain, the age and tree size of the newest checkpoint seen (largest tree size).

    ``note`` is called by the service's loop thread, ``collect`` by the HTTP thread: a dict
    item assignment is atomic, and ``collect`` iterates over a copy.
    """

    def __init__(self, prefix: str, what: str) -> None:
        self._prefix = prefix
        self._what = what
        self._newest: dict[str, CheckpointSeen] = {}

    def note(self, chain: str, size: int, timestamp_us: int) -> None:
        seen = self._newest.get(chain)
        if seen is None or size >= seen.size:
            self._newest[chain] = CheckpointSeen(size, timestamp_us)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        age = GaugeMetricFamily(
            f"{self._prefix}_checkpoint_age_seconds",
            f"Seconds since the timestamp of the newest {self._what} checkpoint, per chain.",
            labels=["chain"],
        )
        size = GaugeMetricFamily(
            f"{self._prefix}_checkpoint_tree_size",
            f"Tree size (records covered) of the newest {self._what} checkpoint, per chain.",
            labels=["chain"],
        )
        for chain, seen in sorted(dict(self._newest).items()):
            age.add_metric([chain], max(0.0, now - seen.timestamp_us / 1e6))
            size.add_metric([chain], seen.size)
        yield age
        yield size


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` can emit, whether or not it has samples yet (a labelled
    metric without children has none); ``_created`` series are left out."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(s.name for s in family.samples if not s.name.endswith("_created"))
    return names
