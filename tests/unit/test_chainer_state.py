"""A chain's in-memory state: where reading starts, what a checkpoint resets."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING

from processors.chainer.state import ChainState
from processors.integrity.record import ChainHead


def test_start_offset() -> None:
    # no record chained yet: the earliest raw offset (the raw topic may have been trimmed)
    assert ChainState(ChainHead("r/0"), None, 0).start_offset == OFFSET_BEGINNING
    assert ChainState(ChainHead("r/0", 4), None, 12).start_offset == 12


def test_checkpointed_resets_the_counters() -> None:
    state = ChainState(ChainHead("r/0", 4), None, 12, since_checkpoint=4, last_checkpoint=0.0)
    before = time.monotonic()
    state.checkpointed()
    assert state.since_checkpoint == 0 and state.last_checkpoint >= before
