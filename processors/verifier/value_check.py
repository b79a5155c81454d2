"""The replay's fast path over raw chain topic values: parse, link and hash in one loop.

:class:`ChainValueCheck` is :func:`schemas.codec.parse_chained_fields` followed by
:class:`processors.integrity.record.NextRecordCheck`, fused so a record costs no tuple, no
function call per field and no Python object beyond its hash. It only ever says "these passed";
anything it does not pass (another layout, a finding) goes to the general path, which decodes the
record and names what is wrong. Tests hold the two paths equal on generated and mutated values.
"""

from __future__ import annotations

import struct

from processors.integrity.errors import IntegrityError
from processors.integrity.record import HASH_SIZE, record_hasher
from schemas.codec import CHAINED_TAIL, chained_lead, zigzag

__all__ = ["ChainValueCheck"]


class ChainValueCheck:
    """Checks runs of one chain's values against the head they must follow."""

    __slots__ = ("_copy", "_lead", "_pack")

    def __init__(self, chain: str) -> None:
        lead = chained_lead(chain)
        try:
            prefix, fields = record_hasher(chain)
        except IntegrityError:
            lead = None  # the general path names the bad chain id
        self._lead = lead
        if lead is not None:
            self._copy = prefix.copy
            self._pack = fields.pack

    def run(
        self,
        values: list[bytes | None],
        start: int,
        stop: int,
        next_seq: int,
        head_hash: bytes,
        hashes: list[bytes],
    ) -> int:
        """Check ``values[start:stop]`` as the records that follow a head of (``next_seq``,
        ``head_hash``); append the hash of each record that passes to ``hashes``. Returns the
        index of the first value that did not pass (``stop`` when all did)."""
        lead = self._lead
        if lead is None:
            return start
        at = len(lead)
        match = CHAINED_TAIL.match
        copy, pack, append = self._copy, self._pack, hashes.append
        for i in range(start, stop):
            value = values[i]
            if value is None or not value.startswith(lead):
                return i
            m = match(value, at)
            if m is None:
                return i
            seq_raw, prev_hash, hash_, offset_raw, at_raw, length_raw = m.groups()
            if prev_hash != head_hash or zigzag(seq_raw) != next_seq:
                return i
            body = m.end()
            length = len(value) - body
            if zigzag(length_raw) != length:
                return i
            h = copy()
            try:
                h.update(
                    pack(next_seq, HASH_SIZE, prev_hash, zigzag(offset_raw), zigzag(at_raw), length)
                )
            except struct.error:
                return i  # a field out of range: the general path names it
            h.update(memoryview(value)[body:])
            if h.digest() != hash_:
                return i
            append(hash_)
            next_seq += 1
            head_hash = hash_
        return stop
