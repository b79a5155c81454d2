"""The chainer's checkpoint rules and records without a broker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from processors.chainer.checkpoints import (
    RANGE_HEADER,
    CheckpointPolicy,
    export_notes,
    sign_head,
)
from processors.chainer.state import ChainState
from processors.integrity.checkpoint import KeyRing, open_checkpoint, origin_for
from processors.integrity.keys import load_signer
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainHead, link
from processors.verifier import offsite


def _chain(records: int, since: int, last_checkpoint: float) -> ChainState:
    head = ChainHead("audit.events/0")
    tree = CompactRange()
    for i in range(records):
        tree.append(link(head, i, i, b"x%d" % i).hash)
    return ChainState(head, tree, records, since_checkpoint=since, last_checkpoint=last_checkpoint)


def test_due_after_records_mid_transaction() -> None:
    policy = CheckpointPolicy(every_records=3, every_seconds=60.0)
    assert not policy.full(_chain(2, 2, 0.0))
    assert policy.full(_chain(3, 3, 0.0))
    assert policy.full(_chain(9, 4, 0.0))


@pytest.mark.parametrize(
    ("since", "age", "final", "due"),
    [
        (0, 100.0, True, False),  # nothing new: never, not even at the end
        (1, 0.5, False, False),  # new records, too soon
        (1, 1.0, False, True),  # new records, time is up
        (1, 0.0, True, True),  # new records, final transaction
    ],
)
def test_due_at_the_end_of_a_transaction(since: int, age: float, final: bool, due: bool) -> None:
    policy = CheckpointPolicy(every_records=1000, every_seconds=1.0)
    assert policy.due(_chain(5, since, 100.0), now=100.0 + age, final=final) is due


def test_signed_head_verifies_and_carries_its_compact_range(
    keypair: tuple[Path, Path], keyring: KeyRing
) -> None:
    chain = _chain(5, 5, 0.0)
    record = sign_head("d.example", chain, load_signer(keypair[0]), 1_700_000_000_000_000)
    cp = open_checkpoint(record.note, keyring, origin=origin_for("d.example", "audit.events/0"))
    assert (cp.size, cp.head_hash, cp.timestamp_us) == (
        5,
        chain.head.head_hash,
        1_700_000_000_000_000,
    )
    assert chain.tree is not None and cp.root_hash == chain.tree.root()
    assert record.key == b"audit.events/0" and record.value == record.note.encode()
    assert record.headers == [(RANGE_HEADER, chain.tree.to_bytes())]
    assert CompactRange.from_bytes(cp.size, record.compact_range).root() == cp.root_hash


def test_export_appends_notes_per_chain_and_never_raises(
    keypair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = load_signer(keypair[0])
    first = sign_head("d.example", _chain(2, 2, 0.0), signer, 1)
    second = sign_head("d.example", _chain(4, 2, 0.0), signer, 2)
    export_notes(None, [first])  # no directory: no copies
    export_notes(tmp_path / "offsite", [first, second])
    assert offsite.read_notes(tmp_path / "offsite", "audit.events/0") == [first.note, second.note]
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.ERROR, logger="sealtrail.chainer"):
        export_notes(blocked, [first])
    assert "could not append checkpoints" in caplog.text
