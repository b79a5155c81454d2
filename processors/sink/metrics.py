"""The sink's Prometheus metrics (docs/METRICS.md), updated per batch or insert, never per row.

Counters are read from :class:`SinkStats` when scraped; histograms are observed once per batch
and per insert; the lag per partition is set from librdkafka's statistics (``on_stats``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Gauge, Histogram, generate_latest

from processors.sink.options import SinkStats
from sealtrail.infra.consumer_lag import lag_of, partition_ends
from sealtrail.infra.metrics import (
    BATCH_BUCKETS,
    SECONDS_BUCKETS,
    NewestCheckpoints,
    StatsCounters,
    new_registry,
)

__all__ = ["FAST", "PYTHON", "SinkMetrics"]

FAST = "fast"  # ClickHouse decodes the batch (processors/sink/fast_path.py)
PYTHON = "python"  # decoded in Python and inserted by clickhouse-connect

_COUNTERS = {
    "consumed": (
        "sealtrail_sink_records_in",
        "Records read from the chain and checkpoint topics (re-reads count again).",
    ),
    "inserted": ("sealtrail_sink_records_out", "Events rows stored in ClickHouse."),
    "skipped": (
        "sealtrail_sink_skipped_records",
        "Records read again that were already stored (after a restart or rebalance).",
    ),
    "rejects": (
        "sealtrail_sink_rejected_rows",
        "Rows written to the rejects table (payloads or chain records that do not decode).",
    ),
    "checkpoints": ("sealtrail_sink_checkpoints", "Checkpoint rows stored."),
    "batches": ("sealtrail_sink_batches", "Batches flushed (one per topic partition flush)."),
    "retries": ("sealtrail_sink_retries", "ClickHouse calls retried after a failure."),
    "consumer_rebuilds": (
        "sealtrail_sink_consumer_rebuilds",
        "Consumers replaced after a fatal error (e.g. a fenced static member).",
    ),
    "fast_batches": (
        "sealtrail_sink_fast_path_batches",
        "Inserts ClickHouse decoded and stored itself (the fast path): one per round of chain "
        "batches flushed together.",
    ),
    "fast_fallbacks": (
        "sealtrail_sink_fast_path_fallbacks",
        "Fast-path inserts that failed and were redone in Python.",
    ),
    "python_batches": (
        "sealtrail_sink_python_batches",
        "Inserts decoded in Python (chain batches not eligible for the fast path, or a fallback).",
    ),
    "decode_seconds": ("sealtrail_sink_decode_seconds", "Seconds spent decoding in Python."),
    "insert_seconds": ("sealtrail_sink_insert_seconds", "Seconds spent in inserts, all tables."),
    "subtree_seconds": (
        "sealtrail_sink_subtree_seconds",
        "Seconds spent writing Merkle subtrees for proofs.",
    ),
}


class SinkMetrics:
    """One sink's registry; ``render()`` is the text a scrape gets."""

    def __init__(self, stats: SinkStats) -> None:
        self.registry = r = new_registry("sink")
        r.register(StatsCounters(stats, _COUNTERS))
        self.batch_records = Histogram(
            "sealtrail_sink_batch_records",
            "Records per flushed batch, per topic kind (chain or checkpoints).",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.chain_batch = self.batch_records.labels("chain")
        self.checkpoint_batch = self.batch_records.labels("checkpoints")
        self.insert_duration = Histogram(
            "sealtrail_sink_insert_duration_seconds",
            "Time one insert took until ClickHouse acknowledged it, per table and path "
            "(fast: ClickHouse decodes; python: decoded here), retries included.",
            ["table", "path"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self._inserts: dict[tuple[str, str], Histogram] = {}
        self.lag = Gauge(
            "sealtrail_sink_consumer_lag",
            "Records not yet stored and committed, per chain or checkpoint topic partition "
            "(the chainer's transaction markers after them do not count).",
            ["topic", "partition"],
            registry=r,
        )
        self.checkpoints = NewestCheckpoints("sealtrail_sink", "stored")
        r.register(self.checkpoints)

    def inserted(self, table: str, path: str, seconds: float) -> None:
        child = self._inserts.get((table, path))
        if child is None:
            child = self._inserts[(table, path)] = self.insert_duration.labels(table, path)
        child.observe(seconds)

    def on_stats(self, stats_json: str, done: Callable[[str, int], int | None]) -> None:
        """Lag per assigned partition: its end offset minus the offset up to which everything
        is stored and committed (``done(topic, partition)``; the group's committed offset if
        None)."""
        self.lag.clear()
        for end in partition_ends(stats_json):
            settled = done(end.topic, end.partition)
            lag = lag_of(end.end, end.committed if settled is None else settled)
            if lag is not None:
                self.lag.labels(end.topic, str(end.partition)).set(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)
