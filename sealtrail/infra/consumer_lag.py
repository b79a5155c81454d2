"""Consumer lag from librdkafka's statistics, without a request to the broker.

With ``statistics.interval.ms`` set, librdkafka hands the application a JSON document every
interval (from inside ``consume``, on the thread that consumes) holding, per assigned partition,
the end offset its last fetch saw and the group's committed offset. :func:`partition_ends`
reads them; the service subtracts the position it knows is done (committed) to get its lag.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

__all__ = ["STATS_INTERVAL_MS", "PartitionEnd", "lag_of", "partition_ends"]

# Often enough for a dashboard, seldom enough that parsing the document costs nothing.
STATS_INTERVAL_MS = 2000


class PartitionEnd(NamedTuple):
    """One assigned partition as librdkafka last saw it (offsets -1 when unknown)."""

    topic: str
    partition: int
    end: int  # the last stable offset (read_committed), else the high watermark
    committed: int  # the group's committed offset as this consumer knows it


def partition_ends(stats_json: str) -> list[PartitionEnd]:
    """The partitions this consumer fetches, from one librdkafka statistics document."""
    try:
        stats: dict[str, Any] = json.loads(stats_json)
    except ValueError:
        return []
    ends: list[PartitionEnd] = []
    for topic, info in (stats.get("topics") or {}).items():
        for key, part in (info.get("partitions") or {}).items():
            partition = int(key)
            # -1 is librdkafka's internal "unassigned" partition; "none": not fetched here.
            if partition < 0 or part.get("fetch_state") in (None, "none"):
                continue
            ls, hi = int(part.get("ls_offset", -1)), int(part.get("hi_offset", -1))
            end = ls if ls >= 0 else hi
            ends.append(PartitionEnd(topic, partition, end, int(part.get("committed_offset", -1))))
    return ends


def lag_of(end: int, done: int) -> int | None:
    """Records between ``done`` (the next offset to process) and ``end``; None if unknown."""
    if end < 0 or done < 0:
        return None
    return max(0, end - done)
