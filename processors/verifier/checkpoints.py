"""A chain's signed checkpoints during a replay: opened once, checked when the replay reaches
their size (root and head hash), forks between copies reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint
from processors.integrity.errors import (
    CheckpointMismatch,
    ForkDetected,
    HistoryRewritten,
    IntegrityError,
)
from processors.verifier.core import ChainResult, SourceCheckpoint

__all__ = ["Pending", "check_at_size", "collect_checkpoints"]


@dataclass(slots=True)
class Pending:
    """A validly signed checkpoint waiting for the replay to reach its size."""

    cp: Checkpoint
    offset: int | None
    source: str


def collect_checkpoints(
    result: ChainResult,
    checkpoints: Iterable[SourceCheckpoint],
    keyring: KeyRing,
    origin: str,
    limit: int,
) -> dict[int, Pending]:
    """Open every note; keep one per size; report bad notes and same-size disagreements."""
    by_size: dict[int, Pending] = {}
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
            by_size[cp.size] = Pending(cp, item.offset, item.source)
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
                by_size[cp.size] = Pending(cp, item.offset, item.source)
    return by_size


def check_at_size(
    result: ChainResult,
    pending: Pending,
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
