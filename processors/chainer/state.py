"""What the chainer holds in memory per chain between transactions (:class:`ChainState`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING

from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainHead

__all__ = ["ChainState"]


@dataclass(slots=True)
class ChainState:
    """One chain as of its last commit: head, Merkle compact range (signed chainers only),
    the raw offset to read next and how far its last checkpoint lies behind."""

    head: ChainHead
    tree: CompactRange | None
    next_offset: int  # raw offset after the last chained record (committed)
    since_checkpoint: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)

    @property
    def start_offset(self) -> int:
        """Where the consumer starts reading the raw partition: the earliest offset for a
        chain that holds no record yet, else the committed one."""
        return self.next_offset if self.head.next_seq else OFFSET_BEGINNING

    def checkpointed(self) -> None:
        """A checkpoint of the current head was just produced."""
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
