"""The pure verifier: replay one chain's records and checkpoints, return what was found.

No Kafka, ClickHouse or CLI here: callers hand in iterables (records in topic order, signed
checkpoint notes, ClickHouse rows in seq order) and get a :class:`ChainResult` whose findings
are typed :class:`~processors.integrity.errors.IntegrityError` objects carrying evidence.

Memory is O(number of checkpoints + findings kept), never O(records): the Merkle tree is kept as
a :class:`CompactRange` and checkpoints are checked as the replay passes their size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint
from processors.integrity.errors import (
    CheckpointMismatch,
    ClickHouseMismatch,
    ForkDetected,
    HistoryRewritten,
    IntegrityError,
    MalformedRecord,
    RecordsDeleted,
    Truncated,
)
from processors.integrity.merkle import CompactRange
from processors.integrity.record import (
    HASH_SIZE,
    ZERO_HASH,
    ChainedRecord,
    ChainHead,
    check_record,
    record_hasher,
)

__all__ = [
    "DEFAULT_MAX_FINDINGS",
    "ChainResult",
    "ChainState",
    "ChRow",
    "NotAnchored",
    "RecordFields",
    "RecordItem",
    "SourceCheckpoint",
    "SourceRecord",
    "verify_chain",
    "verify_chain_fields",
    "verify_rows",
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


@dataclass(slots=True)  # not frozen: built once per record, and frozen init costs ~3x
class SourceRecord:
    """One chain-topic record as read: its offset and the decoded record, or why it is bad."""

    offset: int | None
    record: ChainedRecord | None = None
    problem: IntegrityError | None = None


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


@dataclass(slots=True)
class _Pending:
    cp: Checkpoint
    offset: int | None
    source: str


def _collect_checkpoints(
    result: ChainResult,
    checkpoints: Iterable[SourceCheckpoint],
    keyring: KeyRing,
    origin: str,
    limit: int,
) -> dict[int, _Pending]:
    """Open every note; keep one per size; report bad notes and same-size disagreements."""
    by_size: dict[int, _Pending] = {}
    for item in checkpoints:
        try:
            cp = open_checkpoint(item.note, keyring, origin=origin)
        except IntegrityError as exc:
            exc.chain = result.chain
            if exc.offset is None:
                exc.offset = item.offset
            if item.source != "topic":
                exc.args = (f"{item.source} checkpoint: {exc.args[0]}",)
            result.add(exc, limit)
            continue
        prior = by_size.get(cp.size)
        if prior is None:
            by_size[cp.size] = _Pending(cp, item.offset, item.source)
            continue
        if (prior.cp.root_hash, prior.cp.head_hash) != (cp.root_hash, cp.head_hash):
            result.add(
                ForkDetected(
                    f"two validly signed checkpoints of chain {result.chain} at size {cp.size} "
                    f"disagree ({prior.source} vs {item.source}); the log forked or was rebuilt",
                    chain=result.chain,
                    seq=cp.size,
                    offset=item.offset,
                    expected=prior.cp.root_hash,
                    found=cp.root_hash,
                ),
                limit,
            )
            if prior.source == "topic" and item.source != "topic":
                # The offsite copy is the one an attacker with topic access could not touch.
                by_size[cp.size] = _Pending(cp, item.offset, item.source)
    return by_size


def _check_at_size(
    result: ChainResult,
    pending: _Pending,
    root: bytes,
    head: bytes,
    limit: int,
    trusted: bool = False,
) -> bool:
    cp = pending.cp
    if cp.root_hash == root and cp.head_hash == head:
        result.checkpoints_verified += 1
        result.anchored = True
        result.newest_checkpoint = max(result.newest_checkpoint or 0, cp.size)
        return True
    what = "root hash" if cp.root_hash != root else "head hash"
    expected, found = (root, cp.root_hash) if cp.root_hash != root else (head, cp.head_hash)
    if pending.source == "topic" and not trusted:
        result.add(
            CheckpointMismatch(
                f"checkpoint of chain {result.chain} at size {cp.size} has a {what} that "
                "replaying the chain does not give; the records or the checkpoint were altered",
                chain=result.chain,
                seq=cp.size,
                offset=pending.offset,
                expected=expected,
                found=found,
            ),
            limit,
        )
    else:
        result.add(
            HistoryRewritten(
                f"the {pending.source} checkpoint of chain {result.chain} at size {cp.size} has "
                f"a {what} that the chain no longer gives; its history was rewritten",
                chain=result.chain,
                seq=cp.size,
                offset=pending.offset,
                expected=found,
                found=expected,
            ),
            limit,
        )
    return False


def verify_chain(
    chain: str,
    records: Iterable[SourceRecord],
    checkpoints: Iterable[SourceCheckpoint],
    keyring: KeyRing,
    *,
    origin: str,
    state: ChainState | None = None,
    low_offset: int | None = None,
    require_anchored: bool = False,
    probe_size: int | None = None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    on_record: Callable[[int], None] | None = None,
    state_check: ChainState | None = None,
) -> ChainResult:
    """Verify one chain. ``records`` are in topic order; with ``state`` they must start at the
    remembered last record (``state.offset``), otherwise at the start of the topic.

    ``state_check`` is a remembered head checked during a full replay (when the record at the
    remembered offset is not the remembered one): the replay must reach its size with the same
    head hash and Merkle root, else HistoryRewritten (or Truncated if the chain is shorter).

    ``low_offset`` is the topic partition's earliest offset (records deleted from the start show
    as a positive value). ``probe_size`` asks for the Merkle root at that size
    (``result.probe_root``) so ClickHouse rows can be compared without re-reading the chain.

    This is :func:`verify_chain_fields` for records given as :class:`SourceRecord` objects.
    """
    return verify_chain_fields(
        chain,
        _fields_of(chain, records),
        checkpoints,
        keyring,
        origin=origin,
        state=state,
        low_offset=low_offset,
        require_anchored=require_anchored,
        probe_size=probe_size,
        max_findings=max_findings,
        on_record=on_record,
        state_check=state_check,
    )


def _fields_of(chain: str, records: Iterable[SourceRecord]) -> Iterator[RecordItem]:
    for item in records:
        rec = item.record
        if item.problem is not None or rec is None:
            yield (
                item.offset,
                item.problem or MalformedRecord("record could not be read", chain=chain),
            )
        else:
            yield (
                item.offset,
                (
                    rec.chain,
                    rec.seq,
                    rec.prev_hash,
                    rec.hash,
                    rec.source_offset,
                    rec.ingested_at_us,
                    rec.payload,
                ),
            )


def verify_chain_fields(
    chain: str,
    records: Iterable[RecordItem],
    checkpoints: Iterable[SourceCheckpoint],
    keyring: KeyRing,
    *,
    origin: str,
    state: ChainState | None = None,
    low_offset: int | None = None,
    require_anchored: bool = False,
    probe_size: int | None = None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    on_record: Callable[[int], None] | None = None,
    state_check: ChainState | None = None,
) -> ChainResult:
    """:func:`verify_chain` over records given as :data:`RecordItem` tuples (the Kafka replay).

    Every record gets every check of :func:`check_record`: a fast path compares seq, link,
    chain id and recomputed hash inline, and any record it does not pass goes to
    :func:`check_record` itself, which raises the finding (or accepts the record).
    """
    limit = max_findings
    result = ChainResult(chain=chain, probe_size=probe_size)
    by_size = _collect_checkpoints(result, checkpoints, keyring, origin, limit)

    if state is not None and state.size > 0:
        cr = state.compact_range()
        head = ChainHead(chain, state.size, state.head_hash)
        last_offset: int | None = state.offset
        result.start_seq = state.size
        if state.checkpoint_size:
            result.anchored = True
            result.newest_checkpoint = state.checkpoint_size
    else:
        cr = CompactRange()
        head = ChainHead(chain, 0, ZERO_HASH)
        last_offset = None
        state = None  # an empty remembered chain anchors nothing
    if state_check is not None and state_check.size > 0:
        sc = state_check.compact_range()
        trusted_cp = Checkpoint(origin, sc.size, sc.root(), state_check.head_hash, 0)
        by_size.setdefault(-1, _Pending(trusted_cp, state_check.offset, "remembered state"))
    pending = sorted(by_size.values(), key=lambda p: p.cp.size)
    # Checkpoints below the trusted start were checked by the run that saved the state.
    while pending and pending[0].cp.size < cr.size:
        pending.pop(0)
    if probe_size is not None and probe_size == cr.size:
        result.probe_root = cr.root()
        result.probe_compact = cr.to_bytes()

    def pass_size(head_hash: bytes, trusted: bool = False) -> int:
        """Check what is due at the current size; return the next size something is due at."""
        size = cr.size
        if probe_size is not None and size == probe_size:
            result.probe_root = cr.root()
            result.probe_compact = cr.to_bytes()
        while pending and pending[0].cp.size == size:
            _check_at_size(result, pending.pop(0), cr.root(), head_hash, limit, trusted)
        due = [p for p in (pending[0].cp.size if pending else None, probe_size) if p is not None]
        due = [p for p in due if p > size]
        return min(due) if due else -1

    # At the start of an incremental run the tree is the remembered one: a checkpoint of that
    # size that disagrees contradicts what an earlier run proved.
    due = pass_size(head.head_hash, trusted=state is not None)
    broken = False
    it: Iterator[RecordItem] = iter(records)
    need_anchor = state is not None and state.size > 0
    # The topics keep every record forever (retention -1), so any low watermark above 0 means
    # DeleteRecords was used, even below a remembered head an incremental run does not re-read.
    if low_offset is not None and low_offset > 0:
        result.add(
            RecordsDeleted(
                f"chain {chain} starts at offset {low_offset}, not 0: records were deleted from "
                "the start of the topic (DeleteRecords) or the topic was rebuilt",
                chain=chain,
                offset=low_offset,
                expected=0,
                found=low_offset,
            ),
            limit,
        )
    if need_anchor:
        assert state is not None
        anchor = next(it, None)
        if anchor is not None:
            need_anchor = False
            offset, fields = anchor
            if (
                not isinstance(fields, tuple)
                or fields[1] != state.size - 1
                or fields[3] != state.head_hash
            ):
                result.anchor_failed = True
                result.add(
                    HistoryRewritten(
                        f"record {state.size - 1} of chain {chain} at offset {state.offset} is "
                        "not the one the last verification saw; the chain was rewritten or "
                        "rebuilt",
                        chain=chain,
                        seq=state.size - 1,
                        offset=offset,
                        expected=state.head_hash,
                        found=None
                        if not isinstance(fields, tuple)
                        else (fields[1], fields[3].hex()),
                    ),
                    limit,
                )
                broken = True
                it = iter(())

    next_seq = head.next_seq
    head_hash = head.head_hash
    verified = 0
    # Per-chain constants of the record hash, hoisted out of the loop.
    fast = len(head_hash) == HASH_SIZE
    try:
        prefix, fields_struct = record_hasher(chain)
    except IntegrityError:
        fast = False  # check_record reports the chain id on the first record
        prefix, fields_struct = record_hasher("")
    copy = prefix.copy
    pack = fields_struct.pack
    append = cr.append
    for offset, fields in it:
        if not isinstance(fields, tuple):
            fields.chain = chain
            if fields.offset is None:
                fields.offset = offset
            result.add(fields, limit)
            broken = True
            break
        c, seq, prev_hash, hash_, source_offset, ingested_at, payload = fields
        passed = False
        if (
            fast
            and seq == next_seq
            and prev_hash == head_hash
            and c == chain
            and len(hash_) == HASH_SIZE
        ):
            h = copy()
            try:
                h.update(pack(seq, HASH_SIZE, prev_hash, source_offset, ingested_at, len(payload)))
            except struct.error:
                pass  # out-of-range field: check_record names it
            else:
                h.update(payload)
                passed = h.digest() == hash_
        if not passed:
            rec = ChainedRecord(*fields)
            if verified == 0 and state is None and seq > 0:
                result.add(
                    RecordsDeleted(
                        f"chain {chain} starts at seq {seq}, not 0: its first records were deleted",
                        chain=chain,
                        seq=seq,
                        offset=offset,
                        expected=0,
                        found=seq,
                    ),
                    limit,
                )
                broken = True
                break
            try:
                check_record(rec, ChainHead(chain, next_seq, head_hash))
            except IntegrityError as exc:
                if exc.offset is None or exc.offset == source_offset:
                    exc.offset = offset
                result.add(exc, limit)
                broken = True
                break
        next_seq = seq + 1
        head_hash = hash_
        append(hash_)
        last_offset = offset
        verified += 1
        if on_record is not None and not verified & 1023:
            on_record(1024)
        if next_seq == due:
            due = pass_size(head_hash)
    head.next_seq = next_seq
    head.head_hash = head_hash
    result.records_verified = verified
    if need_anchor and state is not None:
        result.anchor_failed = True
        result.add(
            Truncated(
                f"chain {chain} no longer holds record {state.size - 1} (offset {state.offset}) "
                "that the last verification saw; the topic was truncated or rebuilt",
                chain=chain,
                seq=state.size - 1,
                offset=state.offset,
                expected=state.size,
                found=None,
            ),
            limit,
        )
        broken = True

    if on_record is not None and result.records_verified & 1023:
        on_record(result.records_verified & 1023)
    result.size = cr.size
    result.root = cr.root()
    if not broken:
        for p in pending:
            result.add(
                Truncated(
                    f"chain {chain} has {cr.size} records but a {p.source} checkpoint vouches "
                    f"for {p.cp.size}; records were cut from its end",
                    chain=chain,
                    seq=cr.size,
                    offset=p.offset,
                    expected=p.cp.size,
                    found=cr.size,
                ),
                limit,
            )
    if not result.anchored and cr.size > 0:
        if require_anchored:
            result.add(
                NotAnchored(
                    f"chain {chain} has no checkpoint signed by a trusted key; it is linked but "
                    "not anchored (check the chainer's signing key and the key ring)",
                    chain=chain,
                    expected="a signed checkpoint",
                    found=None,
                ),
                limit,
            )
        else:
            result.warnings.append(
                f"chain {chain}: linked, not anchored (no checkpoint by a trusted key yet)"
            )
    if result.ok and cr.size > 0:
        prev_cp = state.checkpoint_size if state is not None else 0
        cp_size = max(result.newest_checkpoint or 0, prev_cp)
        cp_root = b""
        if cp_size == cr.size:
            cp_root = result.root
        elif state is not None and cp_size == state.checkpoint_size:
            cp_root = state.checkpoint_root
        result.state = ChainState(
            chain=chain,
            size=cr.size,
            head_hash=head.head_hash,
            offset=last_offset if last_offset is not None else -1,
            compact=cr.to_bytes(),
            checkpoint_size=cp_size,
            checkpoint_root=cp_root,
        )
    return result


# --------------------------------------------------------------------------------------------
# ClickHouse rows


@dataclass(frozen=True, slots=True)
class ChRow:
    """One ``events`` row as read back: the chained fields plus the decoded columns."""

    seq: int
    prev_hash: bytes
    hash: bytes
    source_offset: int
    ingested_at_us: int
    payload: bytes
    decoded: Mapping[str, Any]
    part: str = ""  # the data part holding the row (when asked for)


DecodeFn = Callable[["ChRow"], Mapping[str, Any]]


def _show(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return value


def verify_rows(
    chain: str,
    rows: Iterable[ChRow],
    decode: DecodeFn,
    *,
    size: int,
    expected_root: bytes | None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
) -> ChainResult:
    """Check the ClickHouse rows of ``chain`` (in seq order, seq < ``size``).

    Rows must be exactly seq 0..size-1, each linking to the row before, each hash recomputing
    from the row's columns, each decoded column equal to decoding the payload; and the Merkle
    root over the row hashes must equal ``expected_root`` (the root the verified chain has at
    ``size``), which proves every row hash equals the chain record's hash without keeping them.
    """
    result = ChainResult(chain=chain)
    cr = CompactRange()
    prev_hash = ZERO_HASH
    expect = 0

    def mismatch(message: str, seq: int | None, expected: Any, found: Any) -> None:
        result.add(
            ClickHouseMismatch(
                f"ClickHouse chain {chain} row {seq}: {message}",
                chain=chain,
                seq=seq,
                expected=_show(expected),
                found=_show(found),
            ),
            max_findings,
        )

    for row in rows:
        if row.seq < expect:
            mismatch("is duplicated or out of order", row.seq, expect, row.seq)
            continue
        if row.seq > expect:
            mismatch(
                f"rows {expect}..{row.seq - 1} are missing (deleted from the table)",
                expect,
                expect,
                row.seq,
            )
            expect = row.seq
            cr = None  # type: ignore[assignment]  # the root can no longer be compared
        if row.prev_hash != prev_hash:
            mismatch(
                "prev_hash does not link to the previous row", row.seq, prev_hash, row.prev_hash
            )
        try:
            computed = ChainedRecord(
                chain,
                row.seq,
                row.prev_hash,
                row.hash,
                row.source_offset,
                row.ingested_at_us,
                row.payload,
            ).recompute()
        except IntegrityError:
            computed = b""
        if computed != row.hash:
            mismatch(
                "hash does not recompute from its columns (a column was altered)",
                row.seq,
                computed,
                row.hash,
            )
        want = decode(row)
        for column, value in want.items():
            have = row.decoded.get(column)
            if have != value:
                mismatch(
                    f"decoded column {column} differs from decoding its payload",
                    row.seq,
                    value,
                    have,
                )
                break
        if cr is not None:
            cr.append(row.hash)
        prev_hash = row.hash
        expect = row.seq + 1
        result.records_verified += 1
    if expect < size:
        mismatch(f"rows {expect}..{size - 1} are missing", expect, size, expect)
    result.size = expect
    if result.ok and cr is not None and expected_root is not None and cr.root() != expected_root:
        mismatch(
            f"the rows' hashes do not match the verified chain at size {size} "
            "(rows were rewritten consistently)",
            None,
            expected_root,
            cr.root(),
        )
    return result
