"""Counters read from stats when scraped, newest checkpoints per chain, the names emitted."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sealtrail.infra.metrics import NewestCheckpoints, StatsCounters, exposed_names, new_registry


@dataclass
class _Stats:
    records: int = 0
    seconds: float = 0.0


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_are_read_when_scraped() -> None:
    stats = _Stats()
    registry = new_registry("t")
    registry.register(
        StatsCounters(stats, {"records": ("t_records", "R."), "seconds": ("t_seconds", "S.")})
    )
    assert _samples(generate_latest(registry))[("t_records_total", ())] == 0
    stats.records += 500  # what the loop does per batch; nothing else is needed
    stats.seconds += 1.5
    scraped = _samples(generate_latest(registry))
    assert scraped[("t_records_total", ())] == 500
    assert scraped[("t_seconds_total", ())] == 1.5
    assert ("sealtrail_t_process_cpu_seconds_total", ()) in scraped


def test_newest_checkpoint_per_chain() -> None:
    checkpoints = NewestCheckpoints("t", "signed")
    registry = new_registry("t")
    registry.register(checkpoints)
    now_us = int(time.time() * 1e6)
    checkpoints.note("raw/0", 10, now_us - 30_000_000)
    checkpoints.note("raw/0", 12, now_us - 5_000_000)
    checkpoints.note("raw/0", 11, now_us)  # older tree (re-read): not newer
    checkpoints.note("raw/1", 3, now_us - 1_000_000)
    scraped = _samples(generate_latest(registry))
    assert scraped[("t_checkpoint_tree_size", (("chain", "raw/0"),))] == 12
    assert scraped[("t_checkpoint_tree_size", (("chain", "raw/1"),))] == 3
    assert 4.5 < scraped[("t_checkpoint_age_seconds", (("chain", "raw/0"),))] < 60
    assert 0.5 < scraped[("t_checkpoint_age_seconds", (("chain", "raw/1"),))] < 60


def test_exposed_names_include_metrics_without_samples() -> None:
    registry = new_registry("t")
    registry.register(StatsCounters(_Stats(), {"records": ("t_records", "R.")}))
    registry.register(NewestCheckpoints("t", "signed"))
    Gauge("t_lag", "L.", ["partition"], registry=registry)  # no partition yet
    Histogram("t_seconds", "S.", ["table"], registry=registry)
    names = exposed_names(registry)
    assert {
        "t_records_total",
        "t_checkpoint_age_seconds",
        "t_checkpoint_tree_size",
        "t_lag",
        "t_seconds_bucket",
        "t_seconds_sum",
        "t_seconds_count",
    } <= names
    assert not any(name.endswith("_created") for name in names)
