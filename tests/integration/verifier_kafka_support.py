"""A chain read from Kafka that lags its checkpoints, as the broker can show it for a moment
(commit markers are written partition by partition): for the verifier's and the proofs' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.verifier import kafka_source
from processors.verifier.kafka_source import chain_id, read_checkpoint_notes
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka_read import read_range, reader
from tests.integration.chainer_support import (
    chain_records,
    mixed_payloads,
    produce_raw,
    run_chainer,
    wait_until,
)

__all__ = ["chain_two_rounds", "lagging_chain", "lagging_two_rounds", "second_round"]


def chain_two_rounds(settings: Settings, key: Path, between: object = None) -> None:
    """Partition 0's chain: 10 records and a checkpoint at 10, then 10 more and one at 20."""
    produce_raw(settings, mixed_payloads(0, 30))
    run_chainer(settings, signing_key=key)
    # run_chainer returns once its commit is acknowledged; the broker writes the partitions'
    # commit markers right after, and read_committed readers see the records from then on.
    wait_until(lambda: len(read_checkpoint_notes(settings, 0, chain_id(settings, 0))) == 1,
               30, "the first checkpoint")  # fmt: skip
    if callable(between):
        between()


def second_round(settings: Settings, key: Path) -> None:
    produce_raw(settings, mixed_payloads(30, 30))
    run_chainer(settings, signing_key=key)
    wait_until(lambda: len(chain_records(settings, 0)) == 20, 30, "the second round's records")


def _chain_offsets(settings: Settings) -> list[int]:
    consumer = reader(settings)
    try:
        return [m.offset() or 0 for m in read_range(consumer, settings.topics.chain, 0)]
    finally:
        consumer.close()


def lagging_chain(settings: Settings, calls: list[int], lagging: int) -> object:
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


def lagging_two_rounds(
    settings: Settings, key: Path, monkeypatch: pytest.MonkeyPatch, lagging: int
) -> list[int]:
    """Both rounds chained (checkpoints at 10 and 20), then kafka_source.iter_values patched to
    end after the first 10 records for its first ``lagging`` calls; the partitions it was
    called for are appended to the list returned."""
    chain_two_rounds(settings, key, lambda: second_round(settings, key))
    calls: list[int] = []
    monkeypatch.setattr(kafka_source, "iter_values", lagging_chain(settings, calls, lagging))
    return calls
