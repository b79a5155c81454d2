"""What the pure verifier works with and hands back: records and checkpoints as read, what a
previous run proved (:class:`ChainState`), and what a run found (:class:`ChainResult`).

No Kafka, ClickHouse or CLI in the verifier's checks (:mod:`.replay`, :mod:`.checkpoints`,
:mod:`.rows`): callers hand in iterables and get typed
:class:`~processors.integrity.errors.IntegrityError` findings carrying evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processors.integrity.errors import IntegrityError, MalformedRecord
from processors.integrity.merkle import CompactRange
from schemas.codec import decode_chained_fields
from sealtrail.infra.errors import SealtrailError

__all__ = [
    "DEFAULT_MAX_FINDINGS",
    "ChainResult",
    "ChainState",
    "NotAnchored",
    "RecordFields",
    "RecordItem",
    "SourceCheckpoint",
    "ValueBatch",
    "value_item",
]

DEFAULT_MAX_FINDINGS = 1000


class NotAnchored(IntegrityError):
    """A chain holds no checkpoint signed by a trusted key (only with --require-anchored)."""

    kind = "not_anchored"


RecordFields = tuple[str, int, bytes, bytes, int, int, bytes]
"""A record's fields in ChainedRecord order: (chain, seq, prev_hash, hash, source_offset,
ingested_at_us, payload)."""

RecordItem = tuple[int | None, "RecordFields | IntegrityError"]
"""One record as read for :func:`verify_chain_fields`: its offset and its fields, or why it could
not be read. Plain tuples: building objects per record was a large part of the replay's cost."""


ValueBatch = tuple[list[int], list["bytes | None"]]
"""Offsets and raw values of consecutive chain topic records, as a reader gets them."""


def value_item(offset: int, value: bytes | None) -> RecordItem:
    """A raw chain topic value as a :data:`RecordItem`: its fields, or MalformedRecord."""
    if value is None:
        return offset, MalformedRecord(
            "chain topic record has no value; it was not written by sealtrail"
        )
    try:
        return offset, decode_chained_fields(value)
    except SealtrailError as exc:
        return offset, MalformedRecord(
            f"chain topic record does not decode as a ChainedEvent: {exc}"
        )


@dataclass(frozen=True, slots=True)
class SourceCheckpoint:
    """One signed checkpoint note and where it came from (``topic`` or ``offsite``)."""

    note: str
    offset: int | None = None
    source: str = "topic"


@dataclass(slots=True)
class ChainState:
    """What a previous run proved about a chain: the trusted starting point of the next run."""

    chain: str
    size: int
    head_hash: bytes
    offset: int
    compact: bytes
    checkpoint_size: int = 0
    checkpoint_root: bytes = b""

    def compact_range(self) -> CompactRange:
        return CompactRange.from_bytes(self.size, self.compact)


@dataclass(slots=True)
class ChainResult:
    """What verifying one chain found. ``state`` is set only when nothing was found."""

    chain: str
    records_verified: int = 0
    size: int = 0
    start_seq: int = 0
    checkpoints_verified: int = 0
    newest_checkpoint: int | None = None
    anchored: bool = False
    findings: list[IntegrityError] = field(default_factory=list)
    findings_total: int = 0
    warnings: list[str] = field(default_factory=list)
    state: ChainState | None = None
    root: bytes = b""
    # Root and head hash at a size someone asked for (the ClickHouse row count).
    probe_size: int | None = None
    probe_root: bytes | None = None
    probe_compact: bytes | None = None  # the compact range at probe_size (CompactRange bytes)
    # The record at the remembered offset was not the remembered one (callers then replay all).
    anchor_failed: bool = False

    def add(self, finding: IntegrityError, limit: int = DEFAULT_MAX_FINDINGS) -> None:
        if finding.chain is None:
            finding.chain = self.chain
        self.findings_total += 1
        if len(self.findings) < limit:
            self.findings.append(finding)

    @property
    def ok(self) -> bool:
        return self.findings_total == 0
