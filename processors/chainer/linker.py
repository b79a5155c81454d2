"""Link a run of one raw partition's records onto its chain and encode their chain-topic values
in one loop.

:func:`processors.integrity.record.link` followed by :func:`schemas.chained.record_value` per
record, fused: no record object and no datum dict per record, one timestamp per run (the
records of a run are chained at the same moment). Tests hold the bytes equal to that pair.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from processors.integrity.record import HASH_SIZE, ChainHead, link, record_hasher
from schemas.chained import record_value
from schemas.codec import avro_long, chained_lead

__all__ = ["ChainLinker", "LinkedRun"]

_HASH_LEN = avro_long(HASH_SIZE)
_LONG_MAX = (1 << 63) - 1


@dataclass(slots=True)
class LinkedRun:
    """The chain-topic values of a run of records and their record hashes, in order."""

    values: list[bytes]
    hashes: list[bytes]


class ChainLinker:
    """Links runs of records onto one chain (its head advances in place)."""

    __slots__ = ("_copy", "_lead", "_pack", "head")

    def __init__(self, head: ChainHead) -> None:
        self.head = head
        self._lead = chained_lead(head.chain)
        prefix, fields = record_hasher(head.chain)
        self._copy = prefix.copy
        self._pack = fields.pack

    def link(self, offsets: list[int], payloads: list[bytes], ingested_at_us: int) -> LinkedRun:
        """Chain ``payloads`` (read at raw ``offsets``) after the head; advance the head."""
        plain = (
            self._lead is not None
            and self.head.next_seq + len(offsets) <= _LONG_MAX
            and (not offsets or max(offsets) <= _LONG_MAX)
        )
        if plain:
            assert self._lead is not None
            try:
                return self._link_plain(self._lead, offsets, payloads, ingested_at_us)
            except struct.error:
                pass  # a field out of range: link() below names it
        # A chain id too long for the plain layout, or a field out of the Avro long range:
        # the general encoder (which names the problem).
        head = self.head
        records = [link(head, o, ingested_at_us, p) for o, p in zip(offsets, payloads, strict=True)]
        return LinkedRun([record_value(r) for r in records], [r.hash for r in records])

    def _link_plain(
        self, lead: bytes, offsets: list[int], payloads: list[bytes], ingested_at_us: int
    ) -> LinkedRun:
        head = self.head
        copy, pack, join = self._copy, self._pack, b"".join
        at = avro_long(ingested_at_us)
        seq, prev = head.next_seq, head.head_hash
        values: list[bytes] = []
        hashes: list[bytes] = []
        add_value, add_hash = values.append, hashes.append
        for offset, payload in zip(offsets, payloads, strict=True):
            size = len(payload)
            h = copy()
            h.update(pack(seq, HASH_SIZE, prev, offset, ingested_at_us, size))
            h.update(payload)
            digest = h.digest()
            add_value(
                join(
                    (
                        lead,
                        avro_long(seq),
                        _HASH_LEN,
                        prev,
                        _HASH_LEN,
                        digest,
                        avro_long(offset),
                        at,
                        avro_long(size),
                        payload,
                    )
                )
            )
            add_hash(digest)
            seq += 1
            prev = digest
        head.next_seq, head.head_hash = seq, prev
        return LinkedRun(values, hashes)
