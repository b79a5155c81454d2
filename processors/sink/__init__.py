"""The ClickHouse sink: chain and checkpoint topics -> ClickHouse, exactly once.

One concept per module: :mod:`.service` (the Kafka loop: batches, offsets, rebalances),
:mod:`.writer` (inserts with deduplication tokens and retries), :mod:`.stored` (what ClickHouse
already holds), :mod:`.fast_path` (ClickHouse decoding the Avro on a worker thread),
:mod:`.columns` (records -> ``events`` rows in Python), :mod:`.rows` (the named row types),
:mod:`.metrics` (Prometheus metrics) and :mod:`.options`. docs/DESIGN.md says how
exactly-once holds.
"""

from processors.sink.columns import event_columns, event_row
from processors.sink.fast_path import AVRO_FILE_NAMES
from processors.sink.options import SinkOptions, SinkStats
from processors.sink.service import Sink

__all__ = [
    "AVRO_FILE_NAMES",
    "Sink",
    "SinkOptions",
    "SinkStats",
    "event_columns",
    "event_row",
]
