"""Typed integrity findings.

Every finding is a :class:`sealtrail.infra.errors.IntegrityError` (exit code 1) with a stable
snake_case ``kind`` that reports, metrics and tests key on, and evidence attributes
(``chain``, ``seq``, ``offset``, ``expected``, ``found``). Key *file* problems are not
findings: they raise :class:`sealtrail.infra.errors.KeyFileError` (re-exported here for
convenience).
"""

from __future__ import annotations

from sealtrail.infra.errors import IntegrityError, KeyFileError

__all__ = [
    "BadSignature",
    "ChainBroken",
    "CheckpointMismatch",
    "ClickHouseMismatch",
    "ForkDetected",
    "HashMismatch",
    "HistoryRewritten",
    "IntegrityError",
    "KeyFileError",
    "KeyOutOfRange",
    "MalformedCheckpoint",
    "MalformedRecord",
    "ProofInvalid",
    "RecordsDeleted",
    "SequenceGap",
    "SequenceRepeat",
    "Truncated",
    "UnknownKey",
]


class SequenceGap(IntegrityError):
    """A record's seq is ahead of the next expected seq: records are missing before it."""

    kind = "seq_gap"


class SequenceRepeat(IntegrityError):
    """A record's seq is behind the next expected seq: a replay, duplicate or reorder."""

    kind = "seq_repeat"


class ChainBroken(IntegrityError):
    """A record's prev_hash is not the hash of the record before it."""

    kind = "chain_broken"


class HashMismatch(IntegrityError):
    """A record's stored hash differs from the hash recomputed from its fields."""

    kind = "hash_mismatch"


class BadSignature(IntegrityError):
    """A signature made by a known key does not verify."""

    kind = "bad_signature"


class UnknownKey(IntegrityError):
    """No key in the trusted key ring signed the note."""

    kind = "unknown_key"


class KeyOutOfRange(IntegrityError):
    """A known key signed a tree size outside the range it is trusted for."""

    kind = "key_out_of_range"


class CheckpointMismatch(IntegrityError):
    """A checkpoint's root hash, head hash or origin differs from what replaying the chain gives."""

    kind = "checkpoint_mismatch"


class ForkDetected(IntegrityError):
    """Two validly signed checkpoints describe incompatible histories."""

    kind = "fork"


class Truncated(IntegrityError):
    """The chain ends before a size that a signed checkpoint vouches for."""

    kind = "truncated"


class RecordsDeleted(IntegrityError):
    """Records that the chain proves existed are missing from a store."""

    kind = "records_deleted"


class HistoryRewritten(IntegrityError):
    """A newer checkpoint is not an append-only extension of an older one."""

    kind = "history_rewritten"


class ProofInvalid(IntegrityError):
    """A Merkle inclusion or consistency proof does not verify."""

    kind = "proof_invalid"


class MalformedCheckpoint(IntegrityError):
    """A signed note, checkpoint body or compact range is not well-formed."""

    kind = "malformed_checkpoint"


class MalformedRecord(IntegrityError):
    """A chained record has fields of the wrong type, size or range."""

    kind = "malformed_record"


class ClickHouseMismatch(IntegrityError):
    """A row in ClickHouse differs from the chained record it claims to be."""

    kind = "clickhouse_mismatch"
