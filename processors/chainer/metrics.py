"""The chainer's Prometheus metrics (docs/METRICS.md), updated per transaction, never per record.

Counters are read from :class:`ChainerStats` when scraped; histograms are observed once per
transaction; the lag per partition is set from librdkafka's statistics (``on_stats``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Gauge, Histogram, generate_latest

from processors.chainer.options import ChainerStats
from sealtrail.infra.consumer_lag import lag_of, partition_ends
from sealtrail.infra.metrics import (
    BATCH_BUCKETS,
    SECONDS_BUCKETS,
    NewestCheckpoints,
    StatsCounters,
    new_registry,
)

__all__ = ["ChainerMetrics"]

_COUNTERS = {
    "consumed": (
        "sealtrail_chainer_records_in",
        "Raw records taken into a transaction (records re-read after a failed one count again).",
    ),
    "records": ("sealtrail_chainer_records_out", "Records chained and committed."),
    "transactions": ("sealtrail_chainer_transactions", "Transactions committed."),
    "checkpoints": ("sealtrail_chainer_checkpoints", "Signed checkpoints committed."),
    "aborts": ("sealtrail_chainer_aborted_transactions", "Transactions aborted."),
    "retries": (
        "sealtrail_chainer_retries",
        "Transactional calls retried after a retriable Kafka error.",
    ),
    "producer_rebuilds": (
        "sealtrail_chainer_producer_rebuilds",
        "Transactional producers replaced after a fatal error or an unclear outcome.",
    ),
    "consumer_rebuilds": (
        "sealtrail_chainer_consumer_rebuilds",
        "Consumers replaced after a fatal error (e.g. a fenced static member).",
    ),
    "recoveries": (
        "sealtrail_chainer_recoveries",
        "Chain heads read back from Kafka (on assignment and after a failed transaction).",
    ),
}


class ChainerMetrics:
    """One chainer's registry; ``render()`` is the text a scrape gets."""

    def __init__(self, stats: ChainerStats) -> None:
        self.registry = r = new_registry("chainer")
        r.register(StatsCounters(stats, _COUNTERS))
        self.batch_records = Histogram(
            "sealtrail_chainer_batch_records",
            "Raw records per committed transaction.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "sealtrail_chainer_transaction_seconds",
            "Time from a batch's begin_transaction to its commit (committed transactions).",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "sealtrail_chainer_consumer_lag",
            "Raw records not yet chained, per raw partition this chainer owns.",
            ["topic", "partition"],
            registry=r,
        )
        self.checkpoints = NewestCheckpoints("sealtrail_chainer", "signed")
        r.register(self.checkpoints)

    def committed(self, records: int, seconds: float) -> None:
        """One committed transaction of ``records`` raw records that took ``seconds``."""
        self.transaction_seconds.observe(seconds)
        if records:
            self.batch_records.observe(records)

    def on_stats(self, stats_json: str, next_offsets: Callable[[int], int | None]) -> None:
        """Lag per owned raw partition: its end offset minus the next offset to chain
        (``next_offsets(partition)``, None if not owned)."""
        self.lag.clear()
        for end in partition_ends(stats_json):
            done = next_offsets(end.partition)
            lag = None if done is None else lag_of(end.end, done)
            if lag is not None:
                self.lag.labels(end.topic, str(end.partition)).set(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)
