"""What ClickHouse already holds, so that records read again add nothing.

Loaded on start-up and on every assignment (another sink may have written meanwhile), then
tracked as the sink inserts. A block that spans several months is written as one part per month,
not atomically, so the stored set of a chain is "every seq below N plus a few above"; holes left
by a crash are found here and filled on the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from processors.sink.writer import Writer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StoredSeqs:
    """Seqs of one chain in ClickHouse: all below ``contiguous``, plus ``extra`` above it."""

    contiguous: int = 0
    extra: set[int] = field(default_factory=set)

    def has(self, seq: int) -> bool:
        return seq < self.contiguous or seq in self.extra

    def none_from(self, seq: int) -> bool:
        """No seq from ``seq`` on is stored."""
        return seq >= self.contiguous and (not self.extra or seq > max(self.extra))

    def add_run(self, first: int, count: int) -> None:
        """Add ``first``, ``first + 1``, ... ``first + count - 1``."""
        if first == self.contiguous and not self.extra:
            self.contiguous += count
        else:
            self.add(range(first, first + count))

    def add(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            if seq == self.contiguous:
                self.contiguous += 1
            elif seq > self.contiguous:
                self.extra.add(seq)
        while self.contiguous in self.extra:
            self.extra.discard(self.contiguous)
            self.contiguous += 1


class StoredState:
    """Per chain, the stored seqs; per checkpoint partition, the highest stored offset."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._seqs: dict[str, StoredSeqs] = {}
        self._cp_offsets: dict[int, int] | None = None

    def reset(self) -> None:
        """Forget everything: it is read again from ClickHouse when next needed."""
        self._seqs.clear()
        self._cp_offsets = None

    def seqs(self, chain: str) -> StoredSeqs:
        stored = self._seqs.get(chain)
        if stored is None:
            stored = self._seqs[chain] = self.writer.retrying(
                f"reading chain {chain}", lambda: self._load_seqs(chain)
            )
        return stored

    def checkpoint_offsets(self) -> dict[int, int]:
        if self._cp_offsets is None:
            db = self.writer.db
            rows = self.writer.retrying(
                "reading stored checkpoints",
                lambda: (
                    self.writer.client.query(
                        f"SELECT kafka_partition, max(kafka_offset) FROM {db}.checkpoints "
                        "GROUP BY kafka_partition"
                    ).result_rows
                ),
            )
            self._cp_offsets = {int(p): int(o) for p, o in rows}
        return self._cp_offsets

    def stored_checkpoints(self, partition: int, last_offset: int) -> None:
        self.checkpoint_offsets()[partition] = last_offset

    def _load_seqs(self, chain: str) -> StoredSeqs:
        client, db = self.writer.client, self.writer.db
        params = {"chain": chain}
        count, top = client.query(
            f"SELECT count(), max(seq) FROM {db}.events WHERE chain = %(chain)s", parameters=params
        ).result_rows[0]
        if count == 0:
            return StoredSeqs()
        if count == top + 1:
            return StoredSeqs(contiguous=int(top) + 1)
        # A crash inside a multi-part insert left holes: find the first, load the seqs above it.
        (first_missing,) = client.query(
            f"SELECT min(rn) FROM (SELECT seq, row_number() OVER (ORDER BY seq) - 1 AS rn "
            f"FROM {db}.events WHERE chain = %(chain)s) WHERE seq != rn",
            parameters=params,
        ).result_rows[0]
        above = client.query(
            f"SELECT DISTINCT seq FROM {db}.events WHERE chain = %(chain)s AND seq >= %(lo)s",
            parameters={"chain": chain, "lo": int(first_missing)},
        ).result_rows
        log.info("chain %s has holes from seq %d; filling them", chain, first_missing)
        return StoredSeqs(contiguous=int(first_missing), extra={int(seq) for (seq,) in above})
