"""Recovery without a broker: a reader whose view went stale is replaced, a stop ends it."""

from __future__ import annotations

import pytest

from processors.chainer import ChainerStats, recovery
from processors.chainer.interrupt import Interrupted
from processors.chainer.recovery import Recovery
from processors.chainer.state import ChainState
from processors.integrity.record import ChainHead
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.service import StopFlag

CONSUMER = object()  # recover() is replaced below: no Kafka is contacted


def _recovery(stop: StopFlag | None = None) -> Recovery:
    stop = stop if stop is not None else StopFlag()
    return Recovery(Settings(), stop, ChainerStats(), signed=False)


def test_recovery_retries_with_a_new_reader_when_kafka_reads_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = _recovery()
    readers: list[object] = []
    monkeypatch.setattr(recovery, "reader", lambda settings: readers.append(1) or readers)
    monkeypatch.setattr(recovery, "close_quietly", lambda consumer: None)
    calls: list[list[int]] = []
    recovered = {0: ChainState(ChainHead("c/0", 3), None, 7)}

    def recover(consumer: object, partitions: list[int]) -> dict[int, ChainState]:
        assert consumer is CONSUMER
        calls.append(partitions)
        if len(calls) < 3:
            raise KafkaUnavailable("could not read the offsets of c/0: Local: Unknown partition")
        return recovered

    monkeypatch.setattr(rec, "recover", recover)
    assert rec.recover_with_fresh_readers(CONSUMER, [0]) == recovered  # type: ignore[arg-type]
    assert recovered[0].start_offset == 7
    assert len(calls) == 3 and len(readers) == 2  # a fresh reader before each retry


def test_recovery_gives_up_after_its_attempts_and_on_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = StopFlag()
    rec = _recovery(stop)
    monkeypatch.setattr(recovery, "reader", lambda settings: None)

    def recover(consumer: object, partitions: list[int]) -> dict[int, ChainState]:
        raise KafkaUnavailable("could not read the offsets of c/0: Local: Unknown partition")

    monkeypatch.setattr(rec, "recover", recover)
    with pytest.raises(KafkaUnavailable, match="Unknown partition"):
        rec.recover_with_fresh_readers(CONSUMER, [0])  # type: ignore[arg-type]
    stop.set()
    with pytest.raises(Interrupted):
        rec.recover_with_fresh_readers(CONSUMER, [0])  # type: ignore[arg-type]
