"""The chainer's checkpoints: when one is due, the signed record it produces, offsite copies.

A checkpoint record goes to partition ``p`` of the checkpoint topic, keyed by the chain id: the
signed note (docs/FORMAT.md) plus a :data:`RANGE_HEADER` header holding the Merkle compact range
at its size, from which :mod:`.recovery` resumes without re-reading the chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from processors.chainer.state import ChainState
from processors.integrity.checkpoint import Checkpoint, origin_for, sign_checkpoint
from processors.integrity.note import Signer
from processors.verifier import offsite
from sealtrail.infra.errors import ConfigError

__all__ = ["RANGE_HEADER", "CheckpointPolicy", "CheckpointRecord", "export_notes", "sign_head"]

log = logging.getLogger("sealtrail.chainer")

RANGE_HEADER = "sealtrail-compact-range"


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When a chain's checkpoint is due (``--checkpoint-records``, ``--checkpoint-seconds``)."""

    every_records: int
    every_seconds: float

    def full(self, chain: ChainState) -> bool:
        """Due at once, mid-transaction: ``every_records`` new records since the last one."""
        return chain.since_checkpoint >= self.every_records

    def due(self, chain: ChainState, now: float, final: bool) -> bool:
        """Due at the end of a transaction: the chain has new records and this is the final
        transaction or ``every_seconds`` passed since its last checkpoint (``now`` monotonic)."""
        return bool(chain.since_checkpoint) and (
            final or now - chain.last_checkpoint >= self.every_seconds
        )


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A signed checkpoint of one chain, as produced to the checkpoint topic."""

    chain: str
    note: str
    compact_range: bytes
    size: int  # the tree size it signs
    timestamp_us: int

    @property
    def key(self) -> bytes:
        return self.chain.encode("utf-8")

    @property
    def value(self) -> bytes:
        return self.note.encode("utf-8")

    @property
    def headers(self) -> list[tuple[str, str | bytes | None]]:
        return [(RANGE_HEADER, self.compact_range)]


def sign_head(
    deployment: str, chain: ChainState, signer: Signer, timestamp_us: int
) -> CheckpointRecord:
    """Sign a checkpoint of ``chain``'s head: its Merkle root and head hash, at ``timestamp_us``."""
    assert chain.tree is not None
    head = chain.head
    cp = Checkpoint(
        origin=origin_for(deployment, head.chain),
        size=head.next_seq,
        root_hash=chain.tree.root(),
        head_hash=head.head_hash,
        timestamp_us=timestamp_us,
    )
    return CheckpointRecord(
        head.chain, sign_checkpoint(cp, signer), chain.tree.to_bytes(), cp.size, timestamp_us
    )


def export_notes(directory: Path | None, records: list[CheckpointRecord]) -> None:
    """Append committed checkpoint notes to their chains' files in ``directory`` (offsite
    copies, ``--export-checkpoints``); None: no copies."""
    if directory is None:
        return
    by_chain: dict[str, list[str]] = {}
    for record in records:
        by_chain.setdefault(record.chain, []).append(record.note)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for chain, chain_notes in by_chain.items():
            offsite.write_notes(directory, chain, chain_notes)
    except (OSError, ConfigError) as exc:
        # The checkpoints are committed in Kafka; a failed offsite copy must be noticed but
        # must not stop chaining.
        log.error("could not append checkpoints to %s: %s", directory, exc)
