"""The verifier's Kafka reader hands every note of a checkpoint partition on, as stored."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, sign_checkpoint
from processors.integrity.errors import CheckpointMismatch, MalformedCheckpoint
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.note import Signer
from processors.integrity.record import ZERO_HASH
from processors.verifier import offsite
from processors.verifier.kafka_source import chain_id, read_checkpoint_notes
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf

pytestmark = pytest.mark.integration


def test_notes_are_read_whatever_their_key_and_never_repaired(
    settings: Settings, tmp_path: Path
) -> None:
    signer = Signer("sealtrail.test", bytes(range(32)))
    ring = KeyRing()
    ring.add(signer.verifier)
    chain = chain_id(settings, 0)
    origin = f"{settings.deployment}/{chain}"
    mine = sign_checkpoint(Checkpoint(origin, 0, EMPTY_ROOT, ZERO_HASH, 1), signer)
    other = sign_checkpoint(
        Checkpoint(f"{settings.deployment}/{chain_id(settings, 1)}", 0, EMPTY_ROOT, ZERO_HASH, 2),
        signer,
    )
    # A valid note plus a signature line of an unknown key whose name is not UTF-8.
    blob = base64.b64encode(bytes(4 + 64))
    broken = mine.encode() + "\u2014 ".encode() + b"\xff " + blob + b"\n"
    producer = Producer(producer_conf(settings))
    sent = [(chain, mine.encode()), (b"not-the-chain-id", mine.encode()), (chain, other.encode())]
    sent.append((chain, broken))
    for key, value in sent:
        producer.produce(
            settings.topics.checkpoints,
            value,
            key.encode() if isinstance(key, str) else key,
            partition=0,
        )
    assert producer.flush(30) == 0
    notes = read_checkpoint_notes(settings, 0, chain)
    assert [n.offset for n in notes] == [0, 1, 2, 3]
    # The Kafka key selects nothing: both copies of the note count.
    for item in notes[:2]:
        assert open_checkpoint(item.note, ring, origin=origin).timestamp_us == 1
    # Another chain's note is not skipped: its signed origin gives it away.
    with pytest.raises(CheckpointMismatch):
        open_checkpoint(notes[2].note, ring, origin=origin)
    # Bytes that are not UTF-8 are rejected, not repaired into U+FFFD and accepted.
    with pytest.raises(MalformedCheckpoint, match="not valid UTF-8"):
        open_checkpoint(notes[3].note, ring, origin=origin)
    # `checkpoints export` copies the notes as they are, and skips (and says) what is not text.
    s = settings
    args = ["--kafka", s.kafka, "--topic-prefix", s.topic_prefix, "--home", str(s.home)]
    result = CliRunner().invoke(app, [*args, "checkpoints", "export", "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "exported 2 new checkpoint(s)" in result.output
    assert "skipped 1 record(s) that are not UTF-8" in result.output
    assert offsite.read_notes(tmp_path, chain) == [mine, other]
