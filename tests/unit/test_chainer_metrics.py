"""The chainer's metrics: counters from its stats, lag from librdkafka statistics."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from processors.chainer.metrics import ChainerMetrics
from processors.chainer.options import ChainerStats


def _samples(metrics: ChainerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def _stats(ends: dict[int, int]) -> str:
    parts = {
        str(p): {"fetch_state": "active", "hi_offset": end, "ls_offset": end}
        for p, end in ends.items()
    }
    return json.dumps({"topics": {"raw": {"partitions": parts}}})


def test_counters_histograms_and_lag() -> None:
    stats = ChainerStats()
    metrics = ChainerMetrics(stats)
    stats.consumed, stats.records, stats.transactions, stats.aborts = 700, 600, 2, 1
    metrics.committed(500, 0.02)
    metrics.committed(100, 0.2)
    metrics.checkpoints.note("raw/0", 600, 1)
    next_offsets = {0: 40, 1: 7}  # partition 2 is not ours (revoked meanwhile)
    metrics.on_stats(_stats({0: 50, 1: 7, 2: 9}), next_offsets.get)
    s = _samples(metrics)
    assert s[("sealtrail_chainer_records_in_total", ())] == 700
    assert s[("sealtrail_chainer_records_out_total", ())] == 600
    assert s[("sealtrail_chainer_aborted_transactions_total", ())] == 1
    assert s[("sealtrail_chainer_batch_records_count", ())] == 2
    assert s[("sealtrail_chainer_batch_records_sum", ())] == 600
    assert s[("sealtrail_chainer_transaction_seconds_bucket", (("le", "0.025"),))] == 1
    lag = {k[1]: v for k, v in s.items() if k[0] == "sealtrail_chainer_consumer_lag"}
    assert lag == {
        (("partition", "0"), ("topic", "raw")): 10,
        (("partition", "1"), ("topic", "raw")): 0,
    }
    assert s[("sealtrail_chainer_checkpoint_tree_size", (("chain", "raw/0"),))] == 600
    # A later document without partition 1 (revoked): its series goes away.
    metrics.on_stats(_stats({0: 60}), next_offsets.get)
    lag = {k[1]: v for k, v in _samples(metrics).items() if k[0].endswith("_consumer_lag")}
    assert lag == {(("partition", "0"), ("topic", "raw")): 20}
