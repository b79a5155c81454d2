"""Consumer lag from a librdkafka statistics document."""

from __future__ import annotations

import json

from sealtrail.infra.consumer_lag import PartitionEnd, lag_of, partition_ends


def _partition(state: str, hi: int, ls: int, committed: int) -> dict[str, object]:
    return {
        "fetch_state": state,
        "hi_offset": hi,
        "ls_offset": ls,
        "committed_offset": committed,
    }


def test_partition_ends() -> None:
    stats = {
        "topics": {
            "t.chain": {
                "partitions": {
                    "-1": _partition("none", -1, -1, -1001),  # librdkafka's unassigned one
                    "0": _partition("active", 15, 12, 9),  # an open transaction: ls < hi
                    "1": _partition("none", 7, 7, 7),  # known but not fetched here
                    "2": _partition("active", 4, -1, -1001),  # no ls yet: the high watermark
                }
            }
        }
    }
    assert partition_ends(json.dumps(stats)) == [
        PartitionEnd("t.chain", 0, 12, 9),
        PartitionEnd("t.chain", 2, 4, -1001),
    ]
    assert partition_ends("not json") == []
    assert partition_ends("{}") == []


def test_lag_of() -> None:
    assert lag_of(12, 9) == 3
    assert lag_of(12, 12) == 0
    assert lag_of(12, 14) == 0  # the end seen is older than the position: caught up
    assert lag_of(-1, 3) is None
    assert lag_of(4, -1001) is None
