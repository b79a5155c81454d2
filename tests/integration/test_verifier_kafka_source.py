"""The verifier's Kafka reader hands every note of a checkpoint partition on, as stored, and
reads a live log without finding a cut that is not there."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka import Producer
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
from sealtrail.infra.kafka import producer_conf
from sealtrail.infra.kafka_read import read_range, reader
from tests.integration.chainer_support import (
    chain_records,
    mixed_payloads,
    produce_raw,
    run_chainer,
    wait_until,
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


def _chain_two_rounds(settings: Settings, key: Path, between: object = None) -> None:
    """Partition 0's chain: 10 records and a checkpoint at 10, then 10 more and one at 20."""
    produce_raw(settings, mixed_payloads(0, 30))
    run_chainer(settings, signing_key=key)
    # run_chainer returns once its commit is acknowledged; the broker writes the partitions'
    # commit markers right after, and read_committed readers see the records from then on.
    wait_until(lambda: len(read_checkpoint_notes(settings, 0, chain_id(settings, 0))) == 1,
               30, "the first checkpoint")  # fmt: skip
    if callable(between):
        between()


def _second_round(settings: Settings, key: Path) -> None:
    produce_raw(settings, mixed_payloads(30, 30))
    run_chainer(settings, signing_key=key)
    wait_until(lambda: len(chain_records(settings, 0)) == 20, 30, "the second round's records")


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
    _chain_two_rounds(settings, keypair[0])
    real = kafka_source.checkpoint_notes_until_now

    def then_the_chainer_commits(*args: object) -> object:
        read = real(*args)  # type: ignore[arg-type]
        _second_round(settings, keypair[0])
        return read

    monkeypatch.setattr(kafka_source, "checkpoint_notes_until_now", then_the_chainer_commits)
    result = kafka_source.run_job(_job(settings, keyring))
    assert result.findings == [], [str(f) for f in result.findings]
    assert (result.size, result.newest_checkpoint, result.anchored) == (20, 10, True)


def _chain_offsets(settings: Settings) -> list[int]:
    consumer = reader(settings)
    try:
        return [m.offset() or 0 for m in read_range(consumer, settings.topics.chain, 0)]
    finally:
        consumer.close()


def _lagging_chain(settings: Settings, calls: list[int], lagging: int) -> object:
    """iter_values whose first ``lagging`` calls end after the first 10 records, as a chain
    partition whose commit marker is not written yet does."""
    real = kafka_source.iter_values

    def iter_values(settings_: Settings, partition: int, start: int | None = None) -> object:
        calls.append(partition)
        low, high, batches = real(settings_, partition, start)
        if len(calls) > lagging:
            return low, high, batches
        end = _chain_offsets(settings)[9] + 1

        def cut() -> object:
            for offs, values in batches:
                kept = [(o, v) for o, v in zip(offs, values, strict=True) if o < end]
                if kept:
                    yield [o for o, _v in kept], [v for _o, v in kept]

        return low, end, cut()

    return iter_values


def test_a_chain_partition_behind_its_checkpoint_is_read_again_once_it_moves(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker writes a transaction's commit markers partition by partition: for a moment
    the checkpoint can be readable and the chain records it vouches for not yet. The verifier
    reads the chain again once its end has moved, and finds nothing."""
    _chain_two_rounds(settings, keypair[0], lambda: _second_round(settings, keypair[0]))
    calls: list[int] = []
    monkeypatch.setattr(kafka_source, "iter_values", _lagging_chain(settings, calls, 1))
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
    _chain_two_rounds(settings, keypair[0], lambda: _second_round(settings, keypair[0]))
    calls: list[int] = []
    monkeypatch.setattr(kafka_source, "iter_values", _lagging_chain(settings, calls, 10**6))
    monkeypatch.setattr(kafka_source, "MARKER_PATIENCE_S", 1.0)
    result = kafka_source.run_job(_job(settings, keyring))
    [cut] = result.findings
    assert isinstance(cut, Truncated) and (cut.expected, cut.found) == (20, 10), str(cut)
    assert "records were cut from its end" in str(cut)
