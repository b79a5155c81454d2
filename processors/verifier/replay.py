"""Replay one chain's records and checkpoints, in small steps, and say what was found.

:func:`verify_chain_fields` is the whole run: :meth:`ChainReplay.start` (from the top, or from
what a previous run proved), :meth:`~ChainReplay.check_low_offset`,
:meth:`~ChainReplay.check_anchor` (an incremental run's first record must be the remembered
one), :meth:`~ChainReplay.replay` (every record linked, hashed and appended to the Merkle tree,
checkpoints checked as their sizes pass) and :meth:`~ChainReplay.finish` (truncation, anchoring,
the state the next run starts from).

Memory is O(number of checkpoints + findings kept), never O(records): the Merkle tree is kept as
a :class:`CompactRange` and checkpoints are checked as the replay passes their size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from processors.integrity.checkpoint import Checkpoint, KeyRing
from processors.integrity.errors import (
    HistoryRewritten,
    IntegrityError,
    RecordsDeleted,
    Truncated,
)
from processors.integrity.merkle import CompactRange
from processors.integrity.record import (
    ZERO_HASH,
    ChainedRecord,
    ChainHead,
    NextRecordCheck,
    check_record,
)
from processors.verifier.checkpoints import Pending, check_at_size, collect_checkpoints
from processors.verifier.core import (
    DEFAULT_MAX_FINDINGS,
    ChainResult,
    ChainState,
    NotAnchored,
    RecordItem,
    SourceCheckpoint,
    ValueBatch,
    value_item,
)
from processors.verifier.value_check import ChainValueCheck

__all__ = ["ChainReplay", "verify_chain_fields", "verify_chain_values"]

# Progress is reported every this many records (a power of two minus one: a bit test).
_PROGRESS_MASK = 1023


@dataclass(slots=True)
class ChainReplay:
    """The state of one chain's replay: the Merkle tree so far, the head, the checkpoints still
    ahead, and the result being filled in."""

    chain: str
    result: ChainResult
    limit: int
    tree: CompactRange
    head: ChainHead
    state: ChainState | None  # what a previous run proved (None: replay from the start)
    pending: list[Pending]
    probe_size: int | None
    last_offset: int | None = None
    broken: bool = False
    need_anchor: bool = False
    due: int = -1  # the next size something is to be checked at (-1: nothing)
    on_record: Callable[[int], None] | None = field(default=None)

    # -- start --------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        chain: str,
        checkpoints: Iterable[SourceCheckpoint],
        keyring: KeyRing,
        *,
        origin: str,
        state: ChainState | None,
        state_check: ChainState | None,
        probe_size: int | None,
        limit: int,
        on_record: Callable[[int], None] | None,
    ) -> ChainReplay:
        """Open the checkpoints and set the replay up at the start or at the remembered head."""
        result = ChainResult(chain=chain, probe_size=probe_size)
        by_size = collect_checkpoints(result, checkpoints, keyring, origin, limit)
        last_offset: int | None = None
        if state is not None and state.size > 0:
            tree = state.compact_range()
            head = ChainHead(chain, state.size, state.head_hash)
            last_offset = state.offset
            result.start_seq = state.size
            if state.checkpoint_size:
                result.anchored = True
                result.newest_checkpoint = state.checkpoint_size
        else:
            tree = CompactRange()
            head = ChainHead(chain, 0, ZERO_HASH)
            state = None  # an empty remembered chain anchors nothing
        if state_check is not None and state_check.size > 0:
            # A remembered head checked during a full replay, like a trusted checkpoint.
            sc = state_check.compact_range()
            trusted = Checkpoint(origin, sc.size, sc.root(), state_check.head_hash, 0)
            by_size.setdefault(-1, Pending(trusted, state_check.offset, "remembered state"))
        pending = sorted(by_size.values(), key=lambda p: p.cp.size)
        # Checkpoints below the trusted start were checked by the run that saved the state.
        while pending and pending[0].cp.size < tree.size:
            pending.pop(0)
        if probe_size is not None and probe_size == tree.size:
            result.probe_root = tree.root()
            result.probe_compact = tree.to_bytes()
        replay = cls(
            chain=chain,
            result=result,
            limit=limit,
            tree=tree,
            head=head,
            state=state,
            pending=pending,
            probe_size=probe_size,
            last_offset=last_offset,
            need_anchor=state is not None,
            on_record=on_record,
        )
        # At the start of an incremental run the tree is the remembered one: a checkpoint of
        # that size that disagrees contradicts what an earlier run proved.
        replay.due = replay.pass_size(head.head_hash, trusted=state is not None)
        return replay

    def pass_size(self, head_hash: bytes, trusted: bool = False) -> int:
        """Check what is due at the current size; return the next size something is due at."""
        size = self.tree.size
        result, pending, probe = self.result, self.pending, self.probe_size
        if probe is not None and size == probe:
            result.probe_root = self.tree.root()
            result.probe_compact = self.tree.to_bytes()
        while pending and pending[0].cp.size == size:
            check_at_size(result, pending.pop(0), self.tree.root(), head_hash, self.limit, trusted)
        due = [p for p in (pending[0].cp.size if pending else None, probe) if p is not None]
        due = [p for p in due if p > size]
        return min(due) if due else -1

    # -- before the records --------------------------------------------------------------------

    def check_low_offset(self, low_offset: int | None) -> None:
        """The topics keep every record forever (retention -1), so any low watermark above 0
        means DeleteRecords was used, even below a remembered head an incremental run does not
        re-read."""
        if low_offset is not None and low_offset > 0:
            self.result.add(
                RecordsDeleted(
                    f"chain {self.chain} starts at offset {low_offset}, not 0: records were "
                    "deleted from the start of the topic (DeleteRecords) or the topic was rebuilt",
                    chain=self.chain,
                    offset=low_offset,
                    expected=0,
                    found=low_offset,
                ),
                self.limit,
            )

    def check_anchor(self, records: Iterator[RecordItem]) -> Iterator[RecordItem]:
        """An incremental run starts at the remembered last record: it must still be there and
        be the same one. Returns the records after it (none if it is not)."""
        state = self.state
        if state is None:
            return records
        anchor = next(records, None)
        if anchor is None:
            return records  # finish() reports the missing anchor as truncation
        self.need_anchor = False
        offset, fields = anchor
        if (
            isinstance(fields, tuple)
            and fields[1] == state.size - 1
            and fields[3] == state.head_hash
        ):
            return records
        self.result.anchor_failed = True
        self.result.add(
            HistoryRewritten(
                f"record {state.size - 1} of chain {self.chain} at offset {state.offset} is "
                "not the one the last verification saw; the chain was rewritten or rebuilt",
                chain=self.chain,
                seq=state.size - 1,
                offset=offset,
                expected=state.head_hash,
                found=None if not isinstance(fields, tuple) else (fields[1], fields[3].hex()),
            ),
            self.limit,
        )
        self.broken = True
        return iter(())

    # -- the records ---------------------------------------------------------------------------

    def replay(self, records: Iterator[RecordItem]) -> None:
        """Every record: next seq, linked, hash recomputed (:class:`NextRecordCheck`, else
        :func:`check_record` names the finding), appended to the tree; checkpoints as their
        sizes pass. Stops at the first finding: what follows cannot be trusted."""
        chain, result, limit = self.chain, self.result, self.limit
        next_seq, head_hash = self.head.next_seq, self.head.head_hash
        passes = NextRecordCheck(chain).passes
        append = self.tree.append
        on_record = self.on_record
        due, verified, last_offset = self.due, 0, self.last_offset
        for offset, fields in records:
            if not isinstance(fields, tuple):
                fields.chain = chain
                if fields.offset is None:
                    fields.offset = offset
                result.add(fields, limit)
                self.broken = True
                break
            c, seq, prev_hash, hash_, source_offset, ingested_at, payload = fields
            if not passes(
                c, seq, prev_hash, hash_, source_offset, ingested_at, payload, next_seq, head_hash
            ):
                finding = self._finding(offset, fields, next_seq, head_hash)
                if finding is not None:
                    result.add(finding, limit)
                    self.broken = True
                    break
            next_seq = seq + 1
            head_hash = hash_
            append(hash_)
            last_offset = offset
            verified += 1
            if on_record is not None and not verified & _PROGRESS_MASK:
                on_record(_PROGRESS_MASK + 1)
            if next_seq == due:
                due = self.pass_size(head_hash)
        self.head.next_seq, self.head.head_hash = next_seq, head_hash
        self.due, self.last_offset = due, last_offset
        result.records_verified += verified
        if on_record is not None and verified & _PROGRESS_MASK:
            on_record(verified & _PROGRESS_MASK)

    def replay_values(self, batches: Iterable[ValueBatch]) -> None:
        """:meth:`replay` over raw chain topic values, as a reader gets them in batches: runs of
        plain records go through :class:`ChainValueCheck` (no per-record objects); a value it
        does not pass is decoded and given to :meth:`replay`, which names any finding."""
        check = ChainValueCheck(self.chain)
        tree, result, on_record = self.tree, self.result, self.on_record
        for offsets, values in batches:
            i, n = 0, len(values)
            if self.need_anchor and n:
                rest = self.check_anchor(iter([value_item(offsets[0], values[0])]))
                if self.broken:
                    return
                del rest
                i = 1
            while i < n:
                head, due = self.head, self.due
                stop = n if due < 0 else min(n, i + due - head.next_seq)
                hashes: list[bytes] = []
                j = check.run(values, i, stop, head.next_seq, head.head_hash, hashes)
                if hashes:
                    tree.extend(hashes)
                    head.next_seq += len(hashes)
                    head.head_hash = hashes[-1]
                    self.last_offset = offsets[j - 1]
                    result.records_verified += len(hashes)
                    if on_record is not None:
                        on_record(len(hashes))
                    if head.next_seq == due:
                        self.due = self.pass_size(head.head_hash)
                if j < stop:
                    # Not a plain next record: the general path decodes it and names what is wrong.
                    self.replay(iter([value_item(offsets[j], values[j])]))
                    if self.broken:
                        return
                    j += 1
                i = j

    def _finding(
        self,
        offset: int | None,
        fields: tuple[str, int, bytes, bytes, int, int, bytes],
        next_seq: int,
        head_hash: bytes,
    ) -> IntegrityError | None:
        """What is wrong with a record the fast check did not pass (None: nothing after all)."""
        seq, source_offset = fields[1], fields[4]
        if next_seq == 0 and seq > 0:  # nothing accepted yet, from the start
            return RecordsDeleted(
                f"chain {self.chain} starts at seq {seq}, not 0: its first records were deleted",
                chain=self.chain,
                seq=seq,
                offset=offset,
                expected=0,
                found=seq,
            )
        try:
            check_record(ChainedRecord(*fields), ChainHead(self.chain, next_seq, head_hash))
        except IntegrityError as exc:
            if exc.offset is None or exc.offset == source_offset:
                exc.offset = offset
            return exc
        return None

    # -- after the records ---------------------------------------------------------------------

    def finish(self, require_anchored: bool) -> ChainResult:
        """Truncation, anchoring and, when nothing was found, the state the next run starts at."""
        chain, result, tree, state = self.chain, self.result, self.tree, self.state
        if self.need_anchor and state is not None:
            result.anchor_failed = True
            result.add(
                Truncated(
                    f"chain {chain} no longer holds record {state.size - 1} (offset "
                    f"{state.offset}) that the last verification saw; the topic was truncated "
                    "or rebuilt",
                    chain=chain,
                    seq=state.size - 1,
                    offset=state.offset,
                    expected=state.size,
                    found=None,
                ),
                self.limit,
            )
            self.broken = True
        result.size = tree.size
        result.root = tree.root()
        if not self.broken:
            for p in self.pending:
                result.add(
                    Truncated(
                        f"chain {chain} has {tree.size} records but a {p.source} checkpoint "
                        f"vouches for {p.cp.size}; records were cut from its end",
                        chain=chain,
                        seq=tree.size,
                        offset=p.offset,
                        expected=p.cp.size,
                        found=tree.size,
                    ),
                    self.limit,
                )
        if not result.anchored and tree.size > 0:
            if require_anchored:
                result.add(
                    NotAnchored(
                        f"chain {chain} has no checkpoint signed by a trusted key; it is linked "
                        "but not anchored (check the chainer's signing key and the key ring)",
                        chain=chain,
                        expected="a signed checkpoint",
                        found=None,
                    ),
                    self.limit,
                )
            else:
                result.warnings.append(
                    f"chain {chain}: linked, not anchored (no checkpoint by a trusted key yet)"
                )
        if result.ok and tree.size > 0:
            result.state = self._next_state()
        return result

    def _next_state(self) -> ChainState:
        result, tree, state = self.result, self.tree, self.state
        prev_cp = state.checkpoint_size if state is not None else 0
        cp_size = max(result.newest_checkpoint or 0, prev_cp)
        cp_root = b""
        if cp_size == tree.size:
            cp_root = result.root
        elif state is not None and cp_size == state.checkpoint_size:
            cp_root = state.checkpoint_root
        return ChainState(
            chain=self.chain,
            size=tree.size,
            head_hash=self.head.head_hash,
            offset=self.last_offset if self.last_offset is not None else -1,
            compact=tree.to_bytes(),
            checkpoint_size=cp_size,
            checkpoint_root=cp_root,
        )


def _verify(
    feed: Callable[[ChainReplay], None],
    chain: str,
    checkpoints: Iterable[SourceCheckpoint],
    keyring: KeyRing,
    *,
    origin: str,
    state: ChainState | None,
    low_offset: int | None,
    require_anchored: bool,
    probe_size: int | None,
    max_findings: int,
    on_record: Callable[[int], None] | None,
    state_check: ChainState | None,
) -> ChainResult:
    replay = ChainReplay.start(
        chain,
        checkpoints,
        keyring,
        origin=origin,
        state=state,
        state_check=state_check,
        probe_size=probe_size,
        limit=max_findings,
        on_record=on_record,
    )
    replay.check_low_offset(low_offset)
    feed(replay)
    return replay.finish(require_anchored)


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
    """Verify one chain. ``records`` are in topic order; with ``state`` they must start at the
    remembered last record (``state.offset``), otherwise at the start of the topic.

    ``state_check`` is a remembered head checked during a full replay (when the record at the
    remembered offset is not the remembered one): the replay must reach its size with the same
    head hash and Merkle root, else HistoryRewritten (or Truncated if the chain is shorter).
    ``low_offset`` is the topic partition's earliest offset (records deleted from the start
    show as a positive value). ``probe_size`` asks for the Merkle root at that size
    (``result.probe_root``) so ClickHouse rows can be compared without re-reading the chain.
    """
    return _verify(
        lambda replay: replay.replay(replay.check_anchor(iter(records))),
        chain,
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


def verify_chain_values(
    chain: str,
    batches: Iterable[ValueBatch],
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
    """:func:`verify_chain_fields` over raw values in batches (what a Kafka reader gets), on
    the fast path of :meth:`ChainReplay.replay_values`; the same findings."""
    return _verify(
        lambda replay: replay.replay_values(batches),
        chain,
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
