"""The sink's metrics: counters from its stats, inserts per table and path, lag."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from processors.sink.metrics import FAST, PYTHON, SinkMetrics
from processors.sink.options import SinkStats


def _samples(metrics: SinkMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_counters_inserts_and_lag() -> None:
    stats = SinkStats()
    metrics = SinkMetrics(stats)
    stats.inserted, stats.fast_batches, stats.fast_fallbacks, stats.python_batches = 90, 3, 1, 1
    metrics.inserted("events", FAST, 0.03)
    metrics.inserted("events", PYTHON, 0.3)
    metrics.inserted("checkpoints", PYTHON, 0.01)
    metrics.chain_batch.observe(90)
    parts = {
        "0": {"fetch_state": "active", "ls_offset": 95, "hi_offset": 95, "committed_offset": 90},
        "1": {"fetch_state": "active", "ls_offset": 8, "hi_offset": 9, "committed_offset": 7},
    }
    done = {("chain", 0): 95}  # settled past the last transaction marker
    metrics.on_stats(
        json.dumps({"topics": {"chain": {"partitions": parts}}}),
        lambda topic, p: done.get((topic, p)),
    )
    s = _samples(metrics)
    assert s[("sealtrail_sink_records_out_total", ())] == 90
    assert s[("sealtrail_sink_fast_path_fallbacks_total", ())] == 1
    count = "sealtrail_sink_insert_duration_seconds_count"
    assert s[(count, (("path", "fast"), ("table", "events")))] == 1
    assert s[(count, (("path", "python"), ("table", "events")))] == 1
    assert s[(count, (("path", "python"), ("table", "checkpoints")))] == 1
    assert s[("sealtrail_sink_batch_records_sum", (("kind", "chain"),))] == 90
    lag = {k[1]: v for k, v in s.items() if k[0] == "sealtrail_sink_consumer_lag"}
    # partition 0: settled offset; partition 1: the group's committed offset, up to the LSO
    assert lag == {
        (("partition", "0"), ("topic", "chain")): 0,
        (("partition", "1"), ("topic", "chain")): 1,
    }
