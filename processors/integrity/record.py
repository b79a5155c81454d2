"""Chained records: the per-record hash and the hash chain (docs/FORMAT.md is normative).

``hash = SHA-256( enc(VERSION_TAG) || enc(utf8(chain)) || u64be(seq) || enc(prev_hash)
|| u64be(source_offset) || i64be(ingested_at_us) || enc(payload) )`` with
``enc(b) = u64be(len(b)) || b``.

Sequence numbers start at 0 and the first record's ``prev_hash`` is :data:`ZERO_HASH`, so a
chain of ``n`` records has ``seq`` 0..n-1 and ``n`` is also its Merkle tree size.

:func:`link` *advances the given* :class:`ChainHead` *in place* and returns the new record;
:func:`check_record` never mutates, call :meth:`ChainHead.advance` after it succeeds.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from processors.integrity.errors import (
    ChainBroken,
    HashMismatch,
    IntegrityError,
    MalformedRecord,
    SequenceGap,
    SequenceRepeat,
)

__all__ = [
    "HASH_SIZE",
    "VERSION_TAG",
    "ZERO_HASH",
    "ChainHead",
    "ChainedRecord",
    "NextRecordCheck",
    "check_record",
    "link",
    "record_hash",
    "record_hasher",
]

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
VERSION_TAG = b"sealtrail/v1/record"

_U64 = struct.Struct(">Q")
# u64be(seq) || u64be(32) || prev_hash[32] || u64be(source_offset) || i64be(ingested_at_us)
# || u64be(len(payload)); the payload bytes follow in a separate update (no copy).
_MIDDLE = struct.Struct(">QQ32sQqQ")
_PREFIX = hashlib.sha256(_U64.pack(len(VERSION_TAG)) + VERSION_TAG)
_CHAIN_PREFIX: dict[str, hashlib._Hash] = {}
_CHAIN_PREFIX_MAX = 4096


def _prefix(chain: str) -> hashlib._Hash:
    """SHA-256 state after ``enc(VERSION_TAG) || enc(utf8(chain))``, cached per chain."""
    state = _CHAIN_PREFIX.get(chain)
    if state is None:
        try:
            raw = chain.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedRecord(
                "chain id is not valid UTF-8; fix the producer of this record", chain=None
            ) from None
        state = _PREFIX.copy()
        state.update(_U64.pack(len(raw)) + raw)
        if len(_CHAIN_PREFIX) >= _CHAIN_PREFIX_MAX:
            _CHAIN_PREFIX.clear()
        _CHAIN_PREFIX[chain] = state
    return state


def record_hash(
    chain: str,
    seq: int,
    prev_hash: bytes,
    source_offset: int,
    ingested_at_us: int,
    payload: bytes,
) -> bytes:
    """The 32-byte SHA-256 record hash; raises MalformedRecord on out-of-range fields."""
    if len(prev_hash) != HASH_SIZE:
        raise MalformedRecord(
            f"prev_hash is {len(prev_hash)} bytes, not {HASH_SIZE}; the record is corrupt",
            chain=chain,
            seq=seq,
            offset=source_offset,
            expected=HASH_SIZE,
            found=len(prev_hash),
        )
    state = _prefix(chain).copy()
    try:
        state.update(
            _MIDDLE.pack(seq, HASH_SIZE, prev_hash, source_offset, ingested_at_us, len(payload))
        )
    except struct.error:
        raise MalformedRecord(
            "seq, source_offset or ingested_at_us is out of range for its 64-bit field; "
            "the record is corrupt",
            chain=chain,
            seq=seq,
            offset=source_offset,
        ) from None
    state.update(payload)
    return state.digest()


def record_hasher(chain: str) -> tuple[hashlib._Hash, struct.Struct]:
    """For hashing many records of one chain without per-record setup (the verifier's replay).

    Returns ``(prefix, fields)``: ``prefix`` is the SHA-256 state after ``enc(VERSION_TAG) ||
    enc(utf8(chain))``, never to be updated itself (``.copy()`` it); ``fields.pack(seq,
    HASH_SIZE, prev_hash, source_offset, ingested_at_us, len(payload))`` gives the bytes that
    follow, then the payload. ``"32s"`` pads or cuts prev_hash, so callers must have checked
    its length, and struct.error means a field is out of range: callers then use
    :func:`check_record`, which names the problem.
    """
    return _prefix(chain), _MIDDLE


class NextRecordCheck:
    """The verifier's fast path over one chain, next to :func:`check_record` so the two are
    one concept: :meth:`passes` is True exactly when :func:`check_record` would accept the
    record after a head of (``next_seq``, ``head_hash``); False means "ask
    :func:`check_record`", which names the finding. It hashes from a per-chain SHA-256 state
    prepared once, with no per-record objects (tests hold it equal to check_record)."""

    __slots__ = ("_copy", "_pack", "_usable", "chain")

    def __init__(self, chain: str) -> None:
        self.chain = chain
        try:
            prefix, fields = record_hasher(chain)
            self._usable = True
        except IntegrityError:
            prefix, fields = record_hasher("")
            self._usable = False  # check_record reports the chain id on the first record
        self._copy = prefix.copy
        self._pack = fields.pack

    def passes(
        self,
        chain: str,
        seq: int,
        prev_hash: bytes,
        hash_: bytes,
        source_offset: int,
        ingested_at_us: int,
        payload: bytes,
        next_seq: int,
        head_hash: bytes,
    ) -> bool:
        if not (
            self._usable
            and seq == next_seq
            and prev_hash == head_hash
            and chain == self.chain
            and len(hash_) == HASH_SIZE
            and len(prev_hash) == HASH_SIZE
        ):
            return False
        h = self._copy()
        try:
            h.update(
                self._pack(seq, HASH_SIZE, prev_hash, source_offset, ingested_at_us, len(payload))
            )
        except struct.error:
            return False  # a field out of range: check_record names it
        h.update(payload)
        return h.digest() == hash_


@dataclass(frozen=True, slots=True)
class ChainedRecord:
    """One record of a chain, as carried on the chain topic and stored in ClickHouse."""

    chain: str
    seq: int
    prev_hash: bytes
    hash: bytes
    source_offset: int
    ingested_at_us: int
    payload: bytes

    def recompute(self) -> bytes:
        """The hash this record's fields give (compare with :attr:`hash`)."""
        return record_hash(
            self.chain,
            self.seq,
            self.prev_hash,
            self.source_offset,
            self.ingested_at_us,
            self.payload,
        )


@dataclass(slots=True)
class ChainHead:
    """Where a chain stands: the seq the next record gets and the hash it must link to."""

    chain: str
    next_seq: int = 0
    head_hash: bytes = ZERO_HASH

    @classmethod
    def after(cls, record: ChainedRecord) -> ChainHead:
        """The head right after ``record``."""
        return cls(record.chain, record.seq + 1, record.hash)

    def advance(self, record: ChainedRecord) -> None:
        """Move this head past ``record`` (which the caller has already checked)."""
        self.next_seq = record.seq + 1
        self.head_hash = record.hash


def link(head: ChainHead, source_offset: int, ingested_at_us: int, payload: bytes) -> ChainedRecord:
    """Chain ``payload`` onto ``head``: return the new record and advance ``head`` in place."""
    seq = head.next_seq
    prev = head.head_hash
    digest = record_hash(head.chain, seq, prev, source_offset, ingested_at_us, payload)
    record = ChainedRecord(head.chain, seq, prev, digest, source_offset, ingested_at_us, payload)
    head.next_seq = seq + 1
    head.head_hash = digest
    return record


def check_record(record: ChainedRecord, prev: ChainHead) -> None:
    """Check that ``record`` is the valid next record after ``prev``; raise a finding if not.

    Checks, in order: chain id and field sizes (MalformedRecord), seq (SequenceGap /
    SequenceRepeat), link (ChainBroken), hash (HashMismatch). Does not advance ``prev``.
    """
    chain, seq, offset = record.chain, record.seq, record.source_offset
    if record.chain != prev.chain:
        raise MalformedRecord(
            f"record of chain {record.chain!r} found in chain {prev.chain!r}; "
            "records were mixed between chains",
            expected=prev.chain,
            found=record.chain,
            chain=chain,
            seq=seq,
            offset=offset,
        )
    for what, value in (("hash", record.hash), ("prev_hash", record.prev_hash)):
        if len(value) != HASH_SIZE:
            raise MalformedRecord(
                f"record {what} is {len(value)} bytes, not {HASH_SIZE}; the record is corrupt",
                expected=HASH_SIZE,
                found=len(value),
                chain=chain,
                seq=seq,
                offset=offset,
            )
    if record.seq > prev.next_seq:
        raise SequenceGap(
            f"seq jumps from {prev.next_seq} to {record.seq} in chain {record.chain}; "
            f"{record.seq - prev.next_seq} record(s) are missing",
            expected=prev.next_seq,
            found=record.seq,
            chain=chain,
            seq=seq,
            offset=offset,
        )
    if record.seq < prev.next_seq:
        raise SequenceRepeat(
            f"seq {record.seq} repeats or goes back in chain {record.chain} "
            f"(expected {prev.next_seq}); records were replayed or reordered",
            expected=prev.next_seq,
            found=record.seq,
            chain=chain,
            seq=seq,
            offset=offset,
        )
    if record.prev_hash != prev.head_hash:
        raise ChainBroken(
            f"record {record.seq} of chain {record.chain} does not link to the previous "
            "record's hash; a record before it was altered, inserted or removed",
            expected=prev.head_hash,
            found=record.prev_hash,
            chain=chain,
            seq=seq,
            offset=offset,
        )
    computed = record.recompute()
    if computed != record.hash:
        raise HashMismatch(
            f"record {record.seq} of chain {record.chain} does not match its stored hash; "
            "its contents were altered",
            expected=computed,
            found=record.hash,
            chain=chain,
            seq=seq,
            offset=offset,
        )
