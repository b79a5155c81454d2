"""The verifier's Kafka reader hands every note of a checkpoint partition on, as stored, and
reads a live log without finding a cut that is not there."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from typer.testing import CliRunner

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, sign_checkpoint
from processors.integrity.errors import CheckpointMismatch, MalformedCheckpoint, Truncated
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.note import Signer
from processors.integrity.record import ZERO_HASH
from processors.verifier import kafka_source, offsite
from processors.verifier.kafka_source import ChainJob, chain_id, keyring_text, read_checkpoint_notes
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import admin, producer_conf
from sealtrail.infra.topics import append_only_config
from tests.integration.verifier_kafka_support import (
    chain_two_rounds,
    lagging_two_rounds,
    second_round,
)

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


def _job(settings: Settings, keyring: KeyRing) -> ChainJob:
    return ChainJob(settings, 0, keyring_text(keyring), None)


def test_a_checkpoint_committed_while_the_verifier_starts_is_no_cut(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chainer commits records and the checkpoint vouching for them in one transaction. If
    the verifier fixed the chain's end before the checkpoints' end, a transaction committed in
    between gave it a checkpoint for records it did not read: "records were cut from its end"
    on a healthy live log (seen in CI, test_live_pipeline). Here that transaction commits right
    after the checkpoints' end is fixed: its records are read, its checkpoint is not."""
    chain_two_rounds(settings, keypair[0])
    real = kafka_source.checkpoint_notes_until_now

    def then_the_chainer_commits(*args: object) -> object:
        read = real(*args)  # type: ignore[arg-type]
        second_round(settings, keypair[0])
        return read

    monkeypatch.setattr(kafka_source, "checkpoint_notes_until_now", then_the_chainer_commits)
    result = kafka_source.run_job(_job(settings, keyring))
    assert result.findings == [], [str(f) for f in result.findings]
    assert (result.size, result.newest_checkpoint, result.anchored) == (20, 10, True)


def test_a_chain_partition_behind_its_checkpoint_is_read_again_once_it_moves(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker writes a transaction's commit markers partition by partition: for a moment
    the checkpoint can be readable and the chain records it vouches for not yet. The verifier
    reads the chain again once its end has moved, and finds nothing."""
    calls = lagging_two_rounds(settings, keypair[0], monkeypatch, 1)
    result = kafka_source.run_job(_job(settings, keyring))
    assert result.findings == [], [str(f) for f in result.findings]
    assert (result.size, result.newest_checkpoint, result.anchored) == (20, 20, True)
    assert len(calls) == 2  # read once behind, once more


def test_a_cut_that_stays_is_reported(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lagging_two_rounds(settings, keypair[0], monkeypatch, 10**6)
    monkeypatch.setattr(kafka_source, "MARKER_PATIENCE_S", 1.0)
    result = kafka_source.run_job(_job(settings, keyring))
    [cut] = result.findings
    assert isinstance(cut, Truncated) and (cut.expected, cut.found) == (20, 10), str(cut)
    assert "records were cut from its end" in str(cut)


def test_a_checkpoint_topic_with_fewer_partitions_is_refused_at_once(
    base_settings: Settings, keypair: tuple[Path, Path]
) -> None:
    """Chain partition p keeps its checkpoints in checkpoint partition p. A checkpoint topic
    short of one used to make `verify` wait out its timeout on "Unknown partition"; now it
    says which chains cannot have checkpoints, before reading anything, with exit 2."""
    s = base_settings
    client = admin(s)  # held until the futures resolve
    futures = client.create_topics(
        [
            NewTopic(s.topics.raw, 3, 1, config=append_only_config(1)),
            NewTopic(s.topics.chain, 3, 1, config=append_only_config(1)),
            NewTopic(s.topics.checkpoints, 1, 1, config=append_only_config(1)),
        ]
    )
    for future in futures.values():
        future.result()
    args = ["--kafka", s.kafka, "--topic-prefix", s.topic_prefix, "--home", str(s.home)]
    result = CliRunner().invoke(app, [*args, "verify", "--no-clickhouse", "--key", str(keypair[1])])
    assert result.exit_code == 2, result.output
    assert f"checkpoint topic {s.topics.checkpoints} has 1 partition(s)" in result.output
    assert "chain partition(s) 1, 2 have nowhere to be" in result.output
    assert "Traceback" not in result.output
